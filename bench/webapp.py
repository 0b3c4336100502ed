"""Visitor capacity of the web app: N visitors in real Chromium open the page, upload a phone-sized photo and get
the answer, one after another; then all N upload and identify at the same moment (a burst); the total memory of
Voila and its kernels is sampled throughout, and the bytes each page sends its kernel are counted; visitor N+1
must get the busy page; closing the pages must free the kernels.

Run: .venv/bin/python -m bench.webapp [--visitors 10] [--model M]   (needs Debian's chromium)
The Voila process runs as on the dyno (Procfile: MALLOC_MMAP_THRESHOLD_=131072, the repo's voila.json).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import ROOT, child_pids, free_port, machine, print_table, pss_mb, write_json
from bench.function import start_server, stop

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]


def family(pid: int) -> list[int]:
    """The process and its children (Voila's kernels)."""
    return [pid, *child_pids(pid)]


def phone_photo(path: Path) -> Path:
    """A 12 Mpx JPEG of ~4 MB, like a phone's."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:3000, 0:4000]
    arr = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.int16) + rng.integers(-25, 25, (3000, 4000, 3))
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=88)
    return path


def _wait_ready(url: str, timeout: float = 120) -> None:
    """Until Voila answers (a static probe: "/" would start a kernel)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "voila/static/ready-probe", timeout=5)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)


def _choose(page: Any, photo: Path) -> None:
    """Choose the photo in the page's FileUpload, as a person does."""
    with page.expect_file_chooser() as chooser:
        page.click("button.widget-upload")
    chooser.value.set_files([str(photo)])


def _visit(browser: Any, url: str, photo: Path) -> tuple[Any, bool, float]:
    """One person on a phone-sized page: open, choose a photo, identify. (page, answered, MB uploaded)"""
    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    sent: list[int] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda data: sent.append(len(data))))
    page.goto(url, wait_until="networkidle", timeout=120_000)
    before = sum(sent)
    page.wait_for_selector("button.widget-upload", timeout=120_000)
    _choose(page, photo)
    page.wait_for_selector("text=ready", timeout=120_000)
    page.click("button:has-text('Identify')")
    page.wait_for_selector(".bc-status .bc-done, .bc-status .bc-failed", timeout=120_000)
    return page, page.locator(".bc-status .bc-done").count() == 1, (sum(sent) - before) / 1e6


def _burst(pages: list[Any], photo: Path) -> int:
    """Everyone at once: choose, then identify; how many were answered."""
    for page in pages:
        _choose(page, photo)
    for page in pages:
        page.wait_for_selector("text=ready", timeout=120_000)
    for page in pages:
        page.click("button:has-text('Identify')")
    answered = 0
    for page in pages:
        page.wait_for_selector(".bc-status .bc-done, .bc-status .bc-failed", timeout=120_000)
        answered += page.locator(".bc-status .bc-done").count()
    return answered


def _close_all(pages: list[Any], voila_pid: int) -> tuple[float, int]:
    """Close every tab (Voila's page asks for its kernel's shutdown); seconds until the kernels went, and how many
    are left after a minute."""
    for page in pages:
        page.close(run_before_unload=True)
        page.context.close()
    t = time.perf_counter()
    while time.perf_counter() - t < 60 and len(family(voila_pid)) > 1:
        time.sleep(0.5)
    return time.perf_counter() - t, len(family(voila_pid)) - 1


def _start_voila(api_port: int, port: int, visitors: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIRDCLF_", "GLIBC_TUNABLES"))}
    env.update(BIRDCLF_API_URL=f"http://127.0.0.1:{api_port}/api", MALLOC_MMAP_THRESHOLD_="131072")
    return subprocess.Popen([sys.executable, "-m", "voila", "app.ipynb", "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", f"--CappedKernelManager.max_kernels={visitors}"],
                            cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _drive(url: str, photo: Path, visitors: int, voila: subprocess.Popen, samples: list[float]) -> dict[str, Any]:
    """Visitors one after another, then all at once, then one too many; then every tab closed."""
    from playwright.sync_api import sync_playwright

    rows, pages = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=LAUNCH_ARGS)
        for n in range(1, visitors + 1):
            t = time.perf_counter()
            page, ok, uploaded = _visit(browser, url, photo)
            pages.append(page)
            rows.append({"visitors": n, "answered": ok, "seconds": time.perf_counter() - t, "uploaded_mb": uploaded,
                         "total_pss_mb": sum(pss_mb(q) for q in family(voila.pid)),
                         "peak_so_far_mb": max(samples) if samples else 0.0})
            print_table(rows[-1:], list(rows[-1]))
        burst_from, t = len(samples), time.perf_counter()
        burst = {"visitors": len(pages), "answered": _burst(pages, photo), "seconds": time.perf_counter() - t,
                 "peak_mb": max(samples[burst_from:] or [0.0])}
        print("burst:", burst)
        extra = browser.new_page()
        busy = extra.goto(url, timeout=60_000)
        busy_status = busy.status if busy else None
        extra.close()
        freed_s, kernels_left = _close_all(pages, voila.pid)
        browser.close()
    return {"rows": rows, "burst": burst, "extra_visitor_status": busy_status, "freed_s": freed_s,
            "kernels_left": kernels_left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visitors", type=int, default=10)
    parser.add_argument("--model", help="ONNX model for the API (default: the starter)")
    args = parser.parse_args()
    from birdclf.training.starter import build_starter

    model = Path(args.model) if args.model else build_starter()[0]
    work = Path(tempfile.mkdtemp(prefix="birdclf-capacity-"))
    photo = phone_photo(work / "phone.jpg")
    api_port, port = free_port(), free_port()
    api, _ = start_server(model, api_port, photo.read_bytes())
    voila = _start_voila(api_port, port, args.visitors, work / "voila.log")
    samples: list[float] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            samples.append(sum(pss_mb(p) for p in family(voila.pid)))
            time.sleep(0.2)

    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_ready(url)
        idle = sum(pss_mb(p) for p in family(voila.pid))
        threading.Thread(target=sample, daemon=True).start()
        run = _drive(url, photo, args.visitors, voila, samples)
    finally:
        stop_sampling.set()
        voila.terminate()
        voila.wait(15)
        stop(api)
    rows, burst, peak = run["rows"], run["burst"], max(samples) if samples else 0.0
    print_table(rows, ["visitors", "answered", "seconds", "uploaded_mb", "total_pss_mb", "peak_so_far_mb"])
    print(f"burst: {burst['visitors']} visitors uploading and identifying at once: {burst['answered']} answered in "
          f"{burst['seconds']:.1f} s, peak {burst['peak_mb']:.0f} MB")
    print(f"Voila idle {idle:.0f} MB; {args.visitors} visitors: {rows[-1]['total_pss_mb']:.0f} MB, peak {peak:.0f} MB "
          f"(PSS, Voila + kernels); visitor {args.visitors + 1}: HTTP {run['extra_visitor_status']}; after closing "
          f"the pages {run['kernels_left']} kernels left after {run['freed_s']:.1f} s")
    record = {"machine": machine(), "idle_mb": idle, "peak_mb": peak, "photo_mb": photo.stat().st_size / 1e6,
              "fits_512_mb": peak < 512, **run}
    print(f"wrote {write_json('webapp', record)}")


if __name__ == "__main__":
    main()
