"""INT8 against fp32 on the answers users get: agreement, `species` answers kept, and speed, for plain INT8 and
for INT8 with its fp32 second look (birdclf's default), on cub50 test photos.

Run: GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295 \
     .venv/bin/python -m bench.int8 --model runs/RUN/model.onnx [--model ...] [--rounds 3]
Calibrates on 300 cub50 train photos (as bench.gate), measures on every cub50 test photo. Speed is served
throughput (Predictor.run, batches of 32, the second look's reruns included) and one-photo latency, each model in
alternating rounds in this one process. Prints a table, writes bench/results/int8.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import SHARED, machine, percentile, print_table, write_json
from birdclf.data.layout import read_dataset
from birdclf.data.split import make_splits
from birdclf.serving.predictor import Predictor


def _answers(predictor: Predictor, batch: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Top-1 and verdict of every input, as served (the other-bird rule included, for a model with that class)."""
    index = {label: i for i, label in enumerate(predictor.labels)}
    predictions = predictor.predict_arrays(list(batch), top_k=1)
    return np.array([index[p.label] for p in predictions]), [p.verdict for p in predictions]


def _speed(predictor: Predictor, batch: np.ndarray, singles: int = 100) -> tuple[float, float, float]:
    """(images/s over `batch` in 32s, p50 and p95 ms of one image at a time)."""
    predictor.run(batch[:32])
    start = time.perf_counter()
    for i in range(0, len(batch), 32):
        predictor.run(batch[i:i + 32])
    throughput = len(batch) / (time.perf_counter() - start)
    times = []
    for row in batch[:singles]:
        t = time.perf_counter()
        predictor.run(row[None])
        times.append((time.perf_counter() - t) * 1000)
    return throughput, percentile(times, 50), percentile(times, 95)


def measure(model: Path, calibration: list[Path], test: list[tuple[Path, str]], rounds: int, out: Path) -> dict:
    """One model's row: plain INT8 and INT8 with the second look against fp32."""
    from birdclf.training.export import quantize_int8

    fp32 = Predictor(model, threads=2)
    index = {label: i for i, label in enumerate(fp32.labels)}
    labels = np.array([index.get(label, -1) for _, label in test])
    evaluation = np.stack([fp32.preprocess(p) for p, _ in test])
    cal = np.stack([fp32.preprocess(p) for p in calibration])
    plain_path, served_path = out / f"{model.parent.name}-int8-plain.onnx", out / f"{model.parent.name}-int8.onnx"
    quantize_int8(model, plain_path, cal, evaluation, labels, second_look=False)
    report = quantize_int8(model, served_path, cal, evaluation, labels)
    models = {"fp32": fp32, "int8": Predictor(plain_path, threads=2), "int8 + second look": Predictor(served_path,
                                                                                                      threads=2)}
    answers = {name: _answers(p, evaluation) for name, p in models.items()}
    ref_top, ref_verdict = answers["fp32"]
    speeds: dict[str, list[tuple[float, float, float]]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, predictor in models.items():
            speeds[name].append(_speed(predictor, evaluation))
    rows = []
    for name, (top, verdict) in answers.items():
        runs = np.array(speeds[name])
        sure = [v == "species" for v in ref_verdict]
        kept = [v == "species" and t == r for v, t, r, s in zip(verdict, top, ref_top, sure) if s]
        rows.append({"model": f"{model.parent.name}: {name}", "top1_agreement": float((top == ref_top).mean()),
                     "verdict_agreement": float(np.mean([a == b for a, b in zip(verdict, ref_verdict)])),
                     "species_kept": float(np.mean(kept)), "accuracy": float((top == labels).mean()),
                     "img_s": float(np.median(runs[:, 0])), "p50_ms": float(np.median(runs[:, 1])),
                     "p95_ms": float(np.median(runs[:, 2])),
                     "mb": (model if name == "fp32" else plain_path if name == "int8" else served_path).stat().st_size
                     / 1e6})
    for row in rows:
        row["speedup"] = row["img_s"] / rows[0]["img_s"]
    rows[2]["rechecked"] = report.rechecked
    return {"rows": rows, "images": len(test), "calibration": len(calibration), "report": report.to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="an fp32 birdclf model trained on cub50")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not (SHARED / "cub50").is_dir():
        raise SystemExit("this benchmark needs ../shared/data")
    cub = make_splits(read_dataset(SHARED / "cub50"))
    calibration = [p for p, _ in cub["train"]][::4][:300]
    record: dict = {"machine": machine(), "models": []}
    with tempfile.TemporaryDirectory(prefix="birdclf-int8-") as tmp:
        for model in args.model:
            record["models"].append(measure(Path(model), calibration, cub["test"], args.rounds, Path(tmp)))
    rows = [row for m in record["models"] for row in m["rows"]]
    images = record["models"][0]["images"]
    print(f"\nINT8 on {images} cub50 test photos (calibrated on {len(calibration)} train photos)")
    print_table(rows, ["model", "top1_agreement", "verdict_agreement", "species_kept", "accuracy", "rechecked",
                       "img_s", "speedup", "p50_ms", "p95_ms", "mb"])
    print(f"wrote {write_json('int8', record)}")


if __name__ == "__main__":
    main()
