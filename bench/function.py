"""The prediction API over real HTTP (uvicorn on loopback): cold start, latency and throughput at 1/4/16 clients,
peak memory under huge images, multipart parse cost, and the size of the packaged Azure Function.

Run: .venv/bin/python -m bench.function [--model M] [--requests 200] [--skip-deploy] [--compare-with CHECKOUT]
    [--compare-find]
(the old hand-written server: `git worktree add /tmp/old e9028bd`, then `--compare-with /tmp/old`)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import SHARED, free_port, machine, percentile, print_table, write_json
from birdclf.constants import DEFAULT_MAX_IMAGES

BIG_SIDE = 7000  # 7000 x 7000 RGBA = 49 Mpx, 196 MB decoded


def post(url: str, data: bytes, content_type: str = "image/jpeg") -> int:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def photos(n: int) -> list[bytes]:
    """Real photos (cub50 test) when ../shared is present, else generated images of similar size."""
    files = sorted((SHARED / "cub50" / "test").rglob("*.jpg"))[:: 7][:n] if SHARED.is_dir() else []
    if files:
        return [f.read_bytes() for f in files]
    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 255, (227, 300, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def start_server(model: Path, port: int, image: bytes, **env: str) -> tuple[subprocess.Popen, float]:
    """Start `birdclf serve`; seconds from process start to the first 200 from /api/predict."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("BIRDCLF_", "GLIBC_TUNABLES"))}
    full_env.update({"BIRDCLF_MODEL": str(model), "BIRDCLF_LOG_LEVEL": "WARNING", **env})
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "birdclf", "serve", "--port", str(port)], env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if post(f"http://127.0.0.1:{port}/api/predict", image) == 200:
                return proc, time.perf_counter() - t0
        except OSError:
            if time.perf_counter() - t0 > 60:
                proc.kill()
                raise
            time.sleep(0.01)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def throughput(url: str, images: list[bytes], clients: int, per_client: int) -> dict:
    """Requests per second and per-request latency with `clients` concurrent clients."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(per_client):
            t = time.perf_counter()
            try:
                ok = post(url, images[(k * per_client + i) % len(images)]) == 200
            except OSError:
                ok = False
            with lock:
                latencies.append((time.perf_counter() - t) * 1000)
                errors[0] += not ok

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    return {"clients": clients, "requests": clients * per_client, "req_s": clients * per_client / elapsed,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95), "errors": errors[0]}


def rss_mb(pid: int, field: str) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_png() -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.zeros((BIG_SIDE, BIG_SIDE, 4), np.uint8)
    arr[::50] = 200
    arr[..., 3] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def odd_images() -> dict[str, tuple[bytes, str]]:
    """Images whose decoding or resizing once cost far more than their pixel count said: a progressive 49 Mpx
    JPEG (libjpeg keeps every coefficient), and strips of a few KB with extreme aspect ratios (65500x1 was once
    resized to 256 x 16.8M pixels)."""
    import numpy as np
    from PIL import Image

    def encoded(img: Image.Image, fmt: str, **options) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **options)
        return buf.getvalue()

    texture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    return {"progressive": (encoded(texture.resize((BIG_SIDE, BIG_SIDE)), "JPEG", progressive=True, quality=60),
                            f"{BIG_SIDE}x{BIG_SIDE} progressive JPEG"),
            "strip": (encoded(Image.new("L", (65500, 1), 90), "JPEG"), "65500x1 JPEG")}


def multipart_photos(images: list[bytes]) -> tuple[bytes, str]:
    """One multipart body carrying every photo, and its content type."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p{i}.jpg"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for i, data in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def memory(model: Path, image: bytes, photo_set: list[bytes]) -> list[dict]:
    """Peak server memory (VmHWM) for one huge RGBA PNG, then for 8 sent at once, each on a fresh server; then 8
    progressive 49 Mpx JPEGs and 8 extreme strips at once; then 16 requests of 16 real photos, 8 at a time."""
    png = big_png()
    odd = odd_images()
    big = f"{BIG_SIDE}x{BIG_SIDE} RGBA PNG ({len(png) / 1e6:.3g} MB file)"
    cases = [(1, 1, png, "image/png", big), (8, 8, png, "image/png", big)]
    cases += [(8, 8, data, "image/jpeg", f"{what} ({len(data) / 1e6:.3g} MB file)") for data, what in odd.values()]
    body, content_type = multipart_photos(photo_set[:DEFAULT_MAX_IMAGES])
    cases.append((16, 8, body, content_type,
                  f"{DEFAULT_MAX_IMAGES} photos, 8 at a time ({len(body) / 1e6:.3g} MB body)"))
    rows = []
    for count, workers, data, content_type, what in cases:
        port = free_port()
        proc, _ = start_server(model, port, image)
        try:
            idle = rss_mb(proc.pid, "VmRSS")
            t = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                statuses = list(pool.map(lambda _, url=f"http://127.0.0.1:{port}/api/predict", body=data,
                                         kind=content_type: post(url, body, kind), range(count)))
            rows.append({"images": f"{count} x {what}", "idle_mb": idle,
                         "peak_mb": rss_mb(proc.pid, "VmHWM"), "after_mb": rss_mb(proc.pid, "VmRSS"),
                         "seconds": time.perf_counter() - t, "answered_200": statuses.count(200)})
        finally:
            stop(proc)
    return rows


def multipart_cost() -> list[dict]:
    """Seconds per MB for Starlette's multipart parser (what /api/predict uses) on bodies of 1-16 MB."""
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    async def parse(body: bytes, max_files: int) -> float:
        async def stream():
            for i in range(0, len(body), 65536):
                yield body[i:i + 65536]

        headers = Headers({"content-type": "multipart/form-data; boundary=bench"})
        t = time.perf_counter()
        form = await MultiPartParser(headers, stream(), max_files=max_files).parse()
        elapsed = time.perf_counter() - t
        await form.close()
        return elapsed

    rows = []
    for megabytes in (1, 4, 16):
        size = megabytes * 2**20
        one = (b"--bench\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n"
               + os.urandom(size) + b"\r\n--bench--\r\n")
        part = (b"--bench\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n"
                + os.urandom(16 * 1024 - 80) + b"\r\n")
        many = part * (size // len(part)) + b"--bench--\r\n"
        t_one = min(asyncio.run(parse(one, 4)) for _ in range(3))
        t_many = min(asyncio.run(parse(many, 10**6)) for _ in range(3))
        rows.append({"body_mb": megabytes, "one_file_ms_per_mb": t_one * 1000 / megabytes,
                     "16kb_parts_ms_per_mb": t_many * 1000 / megabytes, "parts": size // len(part)})
    return rows


def _bytes(files) -> int:
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())


def _by_package(site: Path) -> dict[str, float]:
    packages: dict[str, int] = {}
    for entry in site.iterdir():
        name = entry.name.split("-")[0].lower().removesuffix(".libs").lstrip("_")
        packages[name] = packages.get(name, 0) + _bytes(list(entry.rglob("*")) if entry.is_dir() else [entry])
    return {k: round(v / 1e6, 1) for k, v in sorted(packages.items(), key=lambda kv: -kv[1]) if v > 200_000}


def deploy_size(model: Path) -> list[dict]:
    """The function folder `birdclf package-function` writes, plus its dependencies two ways: as Azure's remote
    build installs requirements.txt (pip --target, .pyc compiled), and as `--build` installs them (trimmed)."""
    work = Path(tempfile.mkdtemp(prefix="birdclf-deploy-"))
    try:
        from birdclf.serving.packaging import package_function

        report = package_function(model, work / "fn", build=True)
        code = _bytes((work / "fn" / "birdclf").rglob("*")) + sum(
            (work / "fn" / name).stat().st_size for name in ("function_app.py", "host.json", "requirements.txt"))
        model_bytes = (work / "fn" / "model.onnx").stat().st_size
        remote = work / "remote"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(remote), "-r",
                        str(work / "fn" / "requirements.txt")], check=True, capture_output=True)
        rows = []
        for route, site in (("remote build (as pip installs requirements.txt)", remote),
                            ("package-function --build (trimmed)", Path(report["build"]["site_packages"]))):
            packages = _bytes(site.rglob("*"))
            rows.append({"route": route, "packages_mb": packages / 1e6, "code_mb": code / 1e6,
                         "model_mb": model_bytes / 1e6, "total_mb": (packages + code + model_bytes) / 1e6,
                         "by_package": _by_package(site)})
        rows[-1]["removed_mb"] = {k: round(v / 1e6, 1) for k, v in report["build"]["removed_bytes"].items()}
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(model: Path, images: list[bytes], variants: dict[str, dict[str, str]], rounds: int,
            requests: int) -> list[dict]:
    """Client rows for each server variant ({name: extra environment}, e.g. another checkout on PYTHONPATH or
    BIRDCLF_FIND=0), alternating them `rounds` times; medians."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(rounds):
        for name, env in variants.items():
            port = free_port()
            proc, _ = start_server(model, port, images[0], **env)
            try:
                for _ in range(10):
                    post(f"http://127.0.0.1:{port}/api/predict", images[0])
                for clients in (1, 4, 16):
                    runs.setdefault((name, clients), []).append(
                        throughput(f"http://127.0.0.1:{port}/api/predict", images, clients,
                                   max(10, requests // clients)))
            finally:
                stop(proc)
    rows = []
    for (name, clients), got in runs.items():
        rows.append({"server": name, "clients": clients, "req_s": statistics.median(r["req_s"] for r in got),
                     "runs_req_s": "/".join(f"{r['req_s']:.0f}" for r in got),
                     "p50_ms": statistics.median(r["p50_ms"] for r in got),
                     "p95_ms": statistics.median(r["p95_ms"] for r in got), "errors": sum(r["errors"] for r in got)})
    return sorted(rows, key=lambda r: (r["clients"], r["server"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="ONNX model (default: the starter)")
    parser.add_argument("--requests", type=int, default=200, help="requests for the one-client run")
    parser.add_argument("--skip-deploy", action="store_true", help="skip the deploy-size install")
    parser.add_argument("--compare-with", type=Path, metavar="CHECKOUT",
                        help="also run another version's server (a checkout), alternating, 3 rounds")
    parser.add_argument("--compare-find", action="store_true",
                        help="also run this server with the find stage on and off (BIRDCLF_FIND=0), alternating")
    args = parser.parse_args()
    from birdclf.training.starter import build_starter

    model = Path(args.model) if args.model else build_starter()[0]
    images = photos(64)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/predict"
    colds = []
    for _ in range(3):
        proc, cold = start_server(model, port, images[0])
        colds.append(cold)
        stop(proc)
    cold_s = sorted(colds)[1]
    proc, _ = start_server(model, port, images[0])
    try:
        for _ in range(10):
            post(url, images[0])
        rows = [throughput(url, images, 1, args.requests)]
        rows += [throughput(url, images, c, max(10, args.requests // c)) for c in (4, 16)]
    finally:
        stop(proc)
    other = {"this": {}, "other": {"PYTHONPATH": str(args.compare_with.resolve())}} if args.compare_with else None
    versus = compare(model, images, other, 3, args.requests) if other else None
    find = compare(model, images, {"find on": {}, "find off": {"BIRDCLF_FIND": "0"}}, 3, args.requests) \
        if args.compare_find else None
    mem = memory(model, images[0], images)
    parse = multipart_cost()
    size = None if args.skip_deploy else deploy_size(model)

    print(f"model {model}; photos: {'cub50 test' if SHARED.is_dir() else 'generated'}; cold start (process start "
          f"to first 200, median of 3): {cold_s:.2f} s")
    print_table(rows, ["clients", "requests", "req_s", "p50_ms", "p95_ms", "errors"])
    if versus:
        print(f"this checkout against {args.compare_with}, medians of 3 alternating runs:")
        print_table(versus, ["server", "clients", "req_s", "runs_req_s", "p50_ms", "p95_ms", "errors"])
    if find:
        print("find stage on and off (BIRDCLF_FIND=0), medians of 3 alternating runs:")
        print_table(find, ["server", "clients", "req_s", "runs_req_s", "p50_ms", "p95_ms", "errors"])
    print_table(mem, ["images", "idle_mb", "peak_mb", "after_mb", "seconds", "answered_200"])
    print_table(parse, ["body_mb", "one_file_ms_per_mb", "16kb_parts_ms_per_mb", "parts"])
    if size:
        print_table(size, ["route", "packages_mb", "code_mb", "model_mb", "total_mb"])
        for row in size:
            print(f"  {row['route']}: " + ", ".join(f"{k} {v}" for k, v in row["by_package"].items()))
        print("  removed by --build:", size[-1]["removed_mb"])
    targets = {"cold start <= 1.0 s": cold_s <= 1.0, "0 errors": all(r["errors"] == 0 for r in rows),
               "peak < 500 MB for 8 huge PNGs": mem[1]["peak_mb"] < 500,
               "multipart < 50 ms/MB": all(max(r["one_file_ms_per_mb"], r["16kb_parts_ms_per_mb"]) < 50
                                           for r in parse)}
    if versus:
        at16 = {r["server"]: r["req_s"] for r in versus if r["clients"] == 16}
        targets["16 clients >= the other server"] = at16["this"] >= at16["other"]
    if find:
        at1 = {r["server"]: r["req_s"] for r in find if r["clients"] == 1}
        targets["find on >= 60% of find off, 1 client"] = at1["find on"] >= 0.6 * at1["find off"]
    if size:
        targets["deploy <= 150 MB (--build)"] = size[-1]["total_mb"] <= 150
    print("targets:", ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    record = {"machine": machine(), "model": str(model), "cold_start_s": cold_s, "rows": rows, "memory": mem,
              "multipart": parse, "deploy": size, "versus": versus, "versus_find": find,
              "targets": targets}
    print(f"wrote {write_json('function', record)}")


if __name__ == "__main__":
    main()
