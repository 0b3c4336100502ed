"""The GPU check: fine-tune efficientnet_b3a in fp16 on ../shared/data/cub50 (train/valid, then its test split),
export and verify the ONNX model, and print time per epoch, images/s, peak GPU memory and test top-1.

Without CUDA, or with --smoke, the same path runs tiny (generated images, timm's test_efficientnet, seconds): the
tests run that, so the script is known to work before a GPU is lent.

Run: bash bench/gpu_check.sh [--smoke] [--epochs 3] [--data DIR] [--arch ARCH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import SHARED, machine, print_table, write_json

GPU_EPOCHS = 3  # one frozen epoch, then these unfrozen: well under 10 minutes on one modern GPU


def _epoch_timer() -> Any:
    """A fastai callback noting each epoch's wall time and training images (synchronised on CUDA)."""
    import torch
    from fastai.callback.core import Callback

    class EpochTimer(Callback):
        order = 99

        def before_fit(self) -> None:
            self.epochs: list[dict[str, float]] = getattr(self, "epochs", [])

        def before_epoch(self) -> None:
            self._images, self._started = 0, time.perf_counter()

        def after_batch(self) -> None:
            if self.training:
                self._images += len(self.yb[0])

        def after_epoch(self) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - self._started
            self.epochs.append({"seconds": seconds, "train_images": self._images})

    return EpochTimer()


def _config(args: argparse.Namespace, gpu: bool, work: Path) -> Any:
    """The recipe's TrainConfig: the GPU run on the real photos, or the tiny smoke run on generated ones."""
    from birdclf.data.synthetic import make_synthetic_birds
    from birdclf.training.trainer import recipe

    if not gpu:
        data = make_synthetic_birds(work / "birds", {"train": 8, "valid": 3, "test": 3})
        return recipe(data, gpu=False, arch=args.arch or "test_efficientnet", pretrained=False, fast_head=False,
                      epochs=1, freeze_epochs=1, bs=8, input_size=64, lr=1e-3, num_workers=0, patience=None,
                      out=str(work / "runs"), name="gpu-check")
    data = Path(args.data or SHARED / "cub50")
    if not data.is_dir():
        raise SystemExit(f"no data at {data}: pass --data (a Kaggle-layout folder with train/valid/test)")
    return recipe(data, gpu=True, arch=args.arch, epochs=args.epochs, precision="fp16", num_workers=args.workers,
                  out=str(work / "runs"), name="gpu-check")


def _start(cfg: Any) -> tuple[Any, str]:
    """The TrainingRun; ImageNet weights when they can be had, else random ones (said in the result)."""
    from dataclasses import replace

    from birdclf.errors import WeightsUnavailableError
    from birdclf.training.trainer import TrainingRun

    try:
        return TrainingRun(cfg), ""
    except WeightsUnavailableError as exc:
        print(f"note: {exc}\n      training from random weights instead: top-1 will be far below a real run's")
        return TrainingRun(replace(cfg, pretrained=False, name=f"{cfg.name}-random")), str(exc)


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Train, export, verify, serve one test photo; the figures."""
    import torch

    from birdclf.serving.predictor import Predictor

    gpu = torch.cuda.is_available() and not args.smoke
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(args, gpu, Path(args.work or tmp))
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        run, weights_note = _start(cfg)
        timer = _epoch_timer()
        run.learn.add_cb(timer)
        started = time.perf_counter()
        run.fit()
        fit_s = time.perf_counter() - started
        run.learn.remove_cb(timer)
        peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
        result = run.finish()
        onnx_report = run.record.get("onnx", {})
        test_photo = run.splits["test"][0][0]
        answer = Predictor(run.run_dir / "model.onnx").predict(test_photo)
    epochs = timer.epochs
    images = sum(e["train_images"] for e in epochs)
    seconds = sum(e["seconds"] for e in epochs)
    return {
        "mode": "gpu" if gpu else "smoke (cpu)", "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "arch": run.arch, "precision": run.precision, "weights": run.learn.weights_source, "weights_note": weights_note,
        "data": cfg.data, "images": run.record["images"], "classes": len(run.dls.vocab),
        "epochs": [{"epoch": i, **e, "images_per_s": e["train_images"] / e["seconds"]} for i, e in enumerate(epochs)],
        "s_per_epoch": seconds / max(1, len(epochs)), "images_per_s": images / seconds if seconds else 0.0,
        "fit_s": fit_s, "peak_gpu_gb": peak, "test_top1": result.metrics.get("test", {}).get("accuracy"),
        "valid_top1": result.metrics["valid"].get("accuracy"), "onnx": onnx_report,
        "served_answer": answer.to_dict(),
        "timings": run.timings, "machine": machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny CPU run, even where CUDA is present")
    parser.add_argument("--epochs", type=int, default=GPU_EPOCHS, help="unfrozen epochs on the GPU")
    parser.add_argument("--data", help="data folder (default: ../shared/data/cub50)")
    parser.add_argument("--arch", help="timm architecture (default: the recipe's, efficientnet_b3a on a GPU)")
    parser.add_argument("--workers", type=int, default=None, help="data loader workers (default: fastai's)")
    parser.add_argument("--work", help="keep the run here instead of a temporary folder")
    parser.add_argument("--json", help="write the figures here (default: bench/results/gpu_check.json)")
    args = parser.parse_args(argv)
    out = check(args)
    print(f"{out['mode']}: {out['device']}, {out['arch']} {out['precision']}, weights {out['weights']}, "
          f"{out['classes']} classes, images {out['images']}")
    print_table(out["epochs"], ["epoch", "seconds", "train_images", "images_per_s"])
    print_table([{k: out[k] for k in ("s_per_epoch", "images_per_s", "peak_gpu_gb", "valid_top1", "test_top1")}],
                ["s_per_epoch", "images_per_s", "peak_gpu_gb", "valid_top1", "test_top1"])
    onnx = out["onnx"]
    print(f"onnx (checker passed, {onnx.get('exporter')}): parity max |diff| {onnx.get('max_abs_diff')}, top-1 "
          f"agreement {onnx.get('top1_agreement')}, batch sizes {onnx.get('batch_sizes')}; one test photo served: "
          f"{out['served_answer']['verdict']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    else:
        print(f"wrote {write_json('gpu_check', out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
