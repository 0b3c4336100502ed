"""Visitor capacity of the web app: N visitors in real Chromium open the page, upload a phone-sized photo and get
the answer, one after another; then all N upload and identify at the same moment (a burst); the total memory of
Voila and its kernels is sampled throughout, and the bytes each page sends its kernel are counted; visitor N+1
must get the busy page; closing the pages must free the kernels.

Run: .venv/bin/python -m bench.webapp [--visitors 10] [--model M]   (needs Debian's chromium)
The Voila process runs as on the dyno (Procfile: MALLOC_MMAP_THRESHOLD_=131072, the repo's voila.json).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visitors", type=int, default=10)
    parser.add_argument("--model", help="ONNX model for the API (default: the starter)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from birdclf.training.starter import build_starter

    model = Path(args.model) if args.model else build_starter()[0]
    work = Path(tempfile.mkdtemp(prefix="birdclf-capacity-"))
    photo = phone_photo(work / "phone.jpg")
    buf = io.BytesIO(photo.read_bytes())
    api_port = free_port()
    api, _ = start_server(model, api_port, buf.getvalue())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIRDCLF_", "GLIBC_TUNABLES"))}
    env.update(BIRDCLF_API_URL=f"http://127.0.0.1:{api_port}/api", MALLOC_MMAP_THRESHOLD_="131072")
    voila = subprocess.Popen([sys.executable, "-m", "voila", "app.ipynb", "--no-browser", f"--port={port}",
                              "--Voila.ip=127.0.0.1", f"--CappedKernelManager.max_kernels={args.visitors}"],
                             cwd=ROOT, env=env, stdout=open(work / "voila.log", "wb"), stderr=subprocess.STDOUT)
    samples: list[float] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            samples.append(sum(pss_mb(p) for p in family(voila.pid)))
            time.sleep(0.2)

    rows = []
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "voila/static/ready-probe", timeout=5)  # "/" would start a kernel
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.5)
        idle = sum(pss_mb(p) for p in family(voila.pid))
        threading.Thread(target=sample, daemon=True).start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=LAUNCH_ARGS)
            pages = []
            for n in range(1, args.visitors + 1):
                t = time.perf_counter()
                page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()  # one person each
                sent: list[int] = []
                page.on("websocket", lambda ws, sent=sent: ws.on("framesent", lambda data: sent.append(len(data))))
                page.goto(url, wait_until="networkidle", timeout=120_000)
                before = sum(sent)
                page.wait_for_selector("button.widget-upload", timeout=120_000)
                with page.expect_file_chooser() as chooser:
                    page.click("button.widget-upload")
                chooser.value.set_files([str(photo)])
                page.wait_for_selector("text=ready", timeout=120_000)
                page.click("button:has-text('Identify')")
                page.wait_for_selector(".bc-status .bc-done, .bc-status .bc-failed", timeout=120_000)
                ok = page.locator(".bc-status .bc-done").count() == 1
                pages.append(page)
                rows.append({"visitors": n, "answered": ok, "seconds": time.perf_counter() - t,
                             "uploaded_mb": (sum(sent) - before) / 1e6,
                             "total_pss_mb": sum(pss_mb(q) for q in family(voila.pid)),
                             "peak_so_far_mb": max(samples) if samples else 0.0})
                print_table(rows[-1:], list(rows[-1]))
            burst_from = len(samples)
            t = time.perf_counter()
            for page in pages:  # everyone at once: choose, then identify
                with page.expect_file_chooser() as chooser:
                    page.click("button.widget-upload")
                chooser.value.set_files([str(photo)])
            for page in pages:
                page.wait_for_selector("text=ready", timeout=120_000)
            for page in pages:
                page.click("button:has-text('Identify')")
            burst_ok = 0
            for page in pages:
                page.wait_for_selector(".bc-status .bc-done, .bc-status .bc-failed", timeout=120_000)
                burst_ok += page.locator(".bc-status .bc-done").count()
            burst = {"visitors": len(pages), "answered": burst_ok, "seconds": time.perf_counter() - t,
                     "peak_mb": max(samples[burst_from:] or [0.0])}
            print("burst:", burst)
            extra = browser.new_page()
            busy = extra.goto(url, timeout=60_000)
            busy_status = busy.status if busy else None
            extra.close()
            for page in pages:
                page.close(run_before_unload=True)  # the tab closes: Voila's page asks for its kernel's shutdown
                page.context.close()
            t = time.perf_counter()
            while time.perf_counter() - t < 60 and len(family(voila.pid)) > 1:
                time.sleep(0.5)
            freed_s = time.perf_counter() - t
            kernels_left = len(family(voila.pid)) - 1
            browser.close()
    finally:
        stop_sampling.set()
        voila.terminate()
        voila.wait(15)
        stop(api)
    peak = max(samples) if samples else 0.0
    print_table(rows, ["visitors", "answered", "seconds", "uploaded_mb", "total_pss_mb", "peak_so_far_mb"])
    print(f"burst: {burst['visitors']} visitors uploading and identifying at once: {burst['answered']} answered in "
          f"{burst['seconds']:.1f} s, peak {burst['peak_mb']:.0f} MB")
    print(f"Voila idle {idle:.0f} MB; {args.visitors} visitors: {rows[-1]['total_pss_mb']:.0f} MB, peak {peak:.0f} MB "
          f"(PSS, Voila + kernels); visitor {args.visitors + 1}: HTTP {busy_status}; after closing the pages "
          f"{kernels_left} kernels left after {freed_s:.1f} s")
    record = {"machine": machine(), "idle_mb": idle, "rows": rows, "peak_mb": peak, "extra_visitor_status": busy_status,
              "kernels_left": kernels_left, "freed_s": freed_s, "photo_mb": photo.stat().st_size / 1e6, "burst": burst,
              "fits_512_mb": peak < 512}
    print(f"wrote {write_json('webapp', record)}")


if __name__ == "__main__":
    main()
