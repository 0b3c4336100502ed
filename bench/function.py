"""The prediction function over real HTTP on loopback: latency, throughput under concurrency, cold start, deploy size.

Run: .venv/bin/python -m bench.function [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.common import RESULTS, ROOT, machine, percentile, print_table, write_json
from bench.inference import sample_images


def post(url: str, data: bytes) -> int:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()
        return resp.status


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int) -> tuple[subprocess.Popen, float]:
    """Start `birdclf serve`; seconds from process start to the first 200 from /api/predict."""
    image = sample_images(1)[0]
    env = dict(os.environ, BIRDCLF_MODEL=str(model))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "birdclf", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if post(f"http://127.0.0.1:{port}/api/predict", image) == 200:
                return proc, time.perf_counter() - t0
        except OSError:
            if time.perf_counter() - t0 > 60:
                proc.kill()
                raise
            time.sleep(0.02)


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


def _bytes(files) -> int:
    return sum(f.stat().st_size for f in files if f.is_file())


def deploy_size(model: Path, int8_model: Path | None = None) -> list[dict]:
    """MB of `pip install -r azure_function/requirements.txt` plus model and code: as installed, and slim (no
    byte-code caches, no bundled test suites), with the fp32 and (if given) the int8 model."""
    work = Path(tempfile.mkdtemp(prefix="birdclf-deploy-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
        subprocess.run([str(work / "venv" / "bin" / "pip"), "install", "-q", "--target", str(work / "site"), "-r",
                        str(ROOT / "azure_function" / "requirements.txt")], check=True, capture_output=True)
        files = list((work / "site").rglob("*"))
        raw = _bytes(files)
        slim = _bytes(f for f in files if not ({"__pycache__", "tests", "testing"} & set(f.parts)))
        code = _bytes((ROOT / "birdclf").rglob("*.py"))
        rows = []
        for name, m in [("fp32", model), ("int8", int8_model)]:
            if m is None:
                continue
            for kind, packages in (("as installed", raw), ("slim", slim)):
                total = packages + code + m.stat().st_size
                rows.append({"packages": kind, "model": name, "packages_mb": packages / 1e6,
                             "model_mb": m.stat().st_size / 1e6, "code_mb": code / 1e6, "total_mb": total / 1e6})
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="ONNX model (default: the starter)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--int8-model", help="also size the deploy with this int8 model (default: bench.inference's)")
    args = parser.parse_args()
    from birdclf.training.starter import build_starter

    model = Path(args.model) if args.model else build_starter()[0]
    images = sample_images(64)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/predict"
    colds = []
    for _ in range(2):
        proc, cold = start_server(model, port)
        colds.append(cold)
        proc.terminate()
        proc.wait(10)
    proc, cold = start_server(model, port)
    colds.append(cold)
    try:
        for _ in range(10):
            post(url, images[0])
        single = throughput(url, images, 1, args.requests)
        rows = [single] + [throughput(url, images, c, max(10, args.requests // c)) for c in (4, 8)]
    finally:
        proc.terminate()
        proc.wait(10)
    int8 = Path(args.int8_model) if args.int8_model else RESULTS / "starter-int8.onnx"
    size = deploy_size(model, int8 if int8 and int8.is_file() else None)
    cold_s = sorted(colds)[1]
    print(f"model {model}; cold start (process start to first 200, median of 3): {cold_s:.2f} s")
    print_table(rows, ["clients", "requests", "req_s", "p50_ms", "p95_ms", "errors"])
    print_table(size, ["packages", "model", "packages_mb", "model_mb", "code_mb", "total_mb"])
    targets = {"p50_ms <= 20": single["p50_ms"] <= 20,
               "deploy total_mb <= 150 (fp32, as installed)": size[0]["total_mb"] <= 150}
    print("targets:", ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    record = {"machine": machine(), "cold_start_s": cold_s, "rows": rows, "deploy": size, "targets": targets}
    print(f"wrote {write_json('function', record)}")


if __name__ == "__main__":
    main()
