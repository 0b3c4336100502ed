"""Inference speed of the starter model: onnxruntime fp32 and int8 vs torch eager, on this machine's CPUs.

Run: GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295 \
     .venv/bin/python -m bench.inference [--model M] [--iters 200]
Reports model file size, cold start (process start to first prediction), single-image latency p50/p95 including
decode and resize, batch-32 throughput (model only and end to end), and int8's top-1 agreement with fp32.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, SHARED, machine, percentile, print_table, write_json
from birdclf.serving.predictor import Predictor, available_cpus

COLD_ORT = """
import sys, time; t0 = float(sys.argv[1])
from birdclf.serving.predictor import Predictor
p = Predictor(sys.argv[2]); p.predict(open(sys.argv[3], 'rb').read())
print(time.time() - t0)
"""
COLD_TORCH = """
import sys, time; t0 = float(sys.argv[1])
import torch
from birdclf.training.starter import starter_module
from birdclf.training.weights import create_model
from birdclf.training.imagenet_birds import bird_indices
from birdclf.serving.imaging import preprocess
from birdclf.training.export import read_model_config
m = starter_module(create_model('tf_efficientnet_lite0')[0], bird_indices()).eval()
x = torch.from_numpy(preprocess(sys.argv[3], read_model_config(sys.argv[2]))[None])
with torch.inference_mode(): m(x)
print(time.time() - t0)
"""


def sample_images(n: int) -> list[bytes]:
    """Real bird JPEGs from ../shared/data when present, else generated ones."""
    files = sorted((SHARED / "cub50" / "test").glob("*/*.jpg"))[:: 7][:n] if SHARED.is_dir() else []
    if files:
        return [f.read_bytes() for f in files]
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def cold_start(code: str, model: Path, image: Path, repeats: int = 3) -> float:
    """Median seconds from process start to the first prediction."""
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code, repr(time.time()), str(model), str(image)],
                             capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return float(np.median(times))


class TorchRunner:
    """The same starter network in torch eager mode, for comparison."""

    def __init__(self, predictor: Predictor) -> None:
        import torch

        from birdclf.training.imagenet_birds import bird_indices
        from birdclf.training.starter import starter_module
        from birdclf.training.weights import create_model

        torch.set_num_threads(available_cpus())
        self.torch = torch
        self.model = starter_module(create_model("tf_efficientnet_lite0")[0], bird_indices()).eval()
        self.predictor = predictor

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(batch))[0].numpy()


def measure(name: str, run_batch, predictor: Predictor, images: list[bytes], iters: int) -> dict:
    """Latency of single images end to end, and batch-32 throughput."""
    arrays = [predictor.preprocess(b) for b in images[:32]]
    batch = np.stack(arrays * (32 // len(arrays) + 1))[:32]
    for _ in range(3):
        run_batch(batch[:1])
        run_batch(batch)
    latencies = []
    for i in range(iters):
        data = images[i % len(images)]
        t = time.perf_counter()
        run_batch(predictor.preprocess(data)[None])
        latencies.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    rounds = max(3, iters // 32)
    for _ in range(rounds):
        run_batch(batch)
    model_only = 32 * rounds / (time.perf_counter() - t)
    t = time.perf_counter()
    for start in range(0, 96, 32):
        chunk = [images[(start + j) % len(images)] for j in range(32)]
        run_batch(np.stack([predictor.preprocess(b) for b in chunk]))
    end_to_end = 96 / (time.perf_counter() - t)
    return {"runtime": name, "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "batch32_img_s": model_only, "batch32_e2e_img_s": end_to_end}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="fp32 ONNX model (default: build/use the starter)")
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    from birdclf.training.export import quantize_int8
    from birdclf.training.starter import build_starter

    model = Path(args.model) if args.model else build_starter()[0]
    images = sample_images(64)
    fp32 = Predictor(model)
    work = Path(tempfile.mkdtemp(prefix="birdclf-bench-"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    int8_path = RESULTS / "starter-int8.onnx"  # kept for bench.function's deploy-size row
    calib = np.stack([fp32.preprocess(b) for b in images[:48]])
    evaluation = np.stack([fp32.preprocess(b) for b in sample_images(248)[48:]])  # held out from calibration
    q = quantize_int8(model, int8_path, calib, evaluation)
    int8 = Predictor(int8_path)
    image_file = work / "bird.jpg"
    image_file.write_bytes(images[0])
    torch_runner = TorchRunner(fp32)

    rows = [
        measure("onnxruntime fp32", lambda b: fp32.run(b), fp32, images, args.iters)
        | {"size_mb": model.stat().st_size / 1e6, "cold_start_s": cold_start(COLD_ORT, model, image_file)},
        measure("onnxruntime int8", lambda b: int8.run(b), int8, images, args.iters)
        | {"size_mb": int8_path.stat().st_size / 1e6, "cold_start_s": cold_start(COLD_ORT, int8_path, image_file),
           "top1_vs_fp32": q.top1_agreement},
        measure("torch eager fp32", torch_runner.run, fp32, images, args.iters)
        | {"size_mb": model.stat().st_size / 1e6, "cold_start_s": cold_start(COLD_TORCH, model, image_file, 2)},
    ]
    print(f"model {model} ({fp32.config.model_name}), {len(images)} real images, threads={fp32.threads}")
    print_table(rows, ["runtime", "size_mb", "cold_start_s", "p50_ms", "p95_ms", "batch32_img_s",
                       "batch32_e2e_img_s", "top1_vs_fp32"])
    targets = {"p50_ms <= 15": rows[0]["p50_ms"] <= 15, "batch32_img_s >= 150": rows[0]["batch32_img_s"] >= 150,
               "cold_start_s <= 1.5": rows[0]["cold_start_s"] <= 1.5}
    print("targets (fp32):", ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    print(f"wrote {write_json('inference', {'machine': machine(), 'rows': rows, 'targets': targets})}")


if __name__ == "__main__":
    main()
