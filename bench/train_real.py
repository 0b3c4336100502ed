"""Train on ../shared/data/cub50 with tf_efficientnet_lite0 on CPU: head-only (cached features), then fine-tuning.

Run: GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295 \
     .venv/bin/python -m bench.train_real [--epochs 6] [--head-epochs 25]
Prints top-1 / top-5 / weighted F1 on cub50's test split (through the exported ONNX model), each stage's wall
time, and the cross-domain check (train on CUB, test on the Kaggle photos of the same species).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from bench.common import SHARED, machine, print_table, write_json
from birdclf.data.layout import read_dataset
from birdclf.data.split import make_splits
from birdclf.training.evaluate import evaluate_onnx
from birdclf.training.trainer import TrainConfig, train


def _key(name: str) -> str:
    return re.sub(r"[^A-Z]", "", name.upper())


def cross_domain(model: Path, cub_labels: tuple[str, ...]) -> dict:
    """Kaggle photos of the species that cub50 also has, scored by the CUB-trained model (all 50 classes)."""
    kaggle = read_dataset(SHARED / "kaggle525-sample")
    by_key = {_key(label): label for label in cub_labels}
    items = [(p, by_key[_key(k)]) for p, k in kaggle.items.get("valid", []) if _key(k) in by_key]
    if not items:
        return {"species": 0}
    metrics = evaluate_onnx(model, items)
    return {"species": len({label for _, label in items}), "images": len(items),
            "accuracy": metrics["accuracy"], "top5_accuracy": metrics["top5_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(SHARED / "cub50"))
    parser.add_argument("--epochs", type=int, default=6, help="unfrozen fine-tuning epochs (0: skip)")
    parser.add_argument("--head-epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lr-mult", type=float, default=10, help="body lr = lr / lr_mult when unfrozen")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data} not found: this benchmark needs ../shared/data")
    out = Path(args.out or tempfile.mkdtemp(prefix="birdclf-bench-"))
    cache = out / "features"
    test_items = make_splits(read_dataset(args.data))["test"]
    rows, record = [], {"machine": machine(), "data": args.data, "arch": "tf_efficientnet_lite0"}

    base = dict(data=args.data, arch="tf_efficientnet_lite0", bs=32, fast_head=True, head_epochs=args.head_epochs,
                feature_cache=str(cache), out=str(out), evaluate=False, seed=42)
    stages = [("head-only (cached features)", TrainConfig(**base, epochs=0, name="head"))]
    if args.epochs:
        stages.append(("head + fine-tune", TrainConfig(**base, epochs=args.epochs, lr=args.lr, lr_mult=args.lr_mult,
                                                       patience=None, name="finetune")))
    for title, cfg in stages:
        start = time.perf_counter()
        result = train(cfg)
        t_eval = time.perf_counter()
        test = evaluate_onnx(result.run_dir / "model.onnx", test_items, result.run_dir / "evaluation")
        timings = dict(result.timings, evaluate_onnx_s=time.perf_counter() - t_eval,
                       total_s=time.perf_counter() - start)
        row = {"stage": title, "top1": test["accuracy"], "top5": test["top5_accuracy"], "f1_w": test["f1_weighted"],
               "valid_acc": result.metrics["valid"]["accuracy"], **{k: round(v, 1) for k, v in timings.items()}}
        if title.startswith("head-only"):
            row["note"] = "feature extraction is part of fast_head_s"
        rows.append(row)
        record[cfg.name] = {"test": {k: v for k, v in test.items() if k != "top_losses"}, "timings": timings,
                            "valid": result.metrics["valid"], "run_dir": str(result.run_dir),
                            "cross_domain": cross_domain(result.run_dir / "model.onnx", tuple(result.learn.dls.vocab))}
        rows[-1]["xdomain_top1"] = record[cfg.name]["cross_domain"].get("accuracy")
        print_table(rows, ["stage", "top1", "top5", "f1_w", "valid_acc", "xdomain_top1", "fast_head_s",
                           "fine_tune_s", "onnx_export_s", "evaluate_onnx_s", "total_s"])
    record["rows"] = rows
    print(f"\nwrote {write_json('train_real', record)}")


if __name__ == "__main__":
    main()
