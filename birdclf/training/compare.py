"""Compare architectures on the same (mini) data: accuracy, time and size, as in the original projects."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import BirdclfError
from .trainer import TrainConfig, train

__all__ = ["compare_architectures"]


def compare_architectures(base: TrainConfig, archs: list[str]) -> list[dict[str, Any]]:
    """Train each architecture with the same config; one row per architecture (failures reported, not raised)."""
    if base.distributed:  # one architecture failing on one process would leave the others waiting for it
        raise BirdclfError("compare trains one architecture after another in one process: --distributed is for "
                           "`birdclf train`")
    rows = []
    for arch in archs:
        start = time.perf_counter()
        try:
            result = train(replace(base, arch=arch, name=f"{base.name or 'compare'}-{arch}", evaluate=False))
            valid = result.metrics["valid"]
            onnx_path = Path(result.run_dir) / "model.onnx"
            rows.append({"arch": arch, "accuracy": valid.get("accuracy"), "top5": valid.get("top5_accuracy"),
                         "valid_loss": valid.get("valid_loss"), "seconds": round(time.perf_counter() - start, 1),
                         "params_m": round(sum(p.numel() for p in result.learn.model.parameters()) / 1e6, 2),
                         "onnx_mb": round(onnx_path.stat().st_size / 1e6, 1) if onnx_path.exists() else None,
                         "run_dir": str(result.run_dir)})
        except Exception as exc:  # one architecture failing (no weights offline) must not lose the others
            rows.append({"arch": arch, "error": f"{type(exc).__name__}: {exc}",
                         "seconds": round(time.perf_counter() - start, 1)})
    return rows
