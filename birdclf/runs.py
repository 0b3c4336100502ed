"""Run folders: everything one training run produced, reloadable for evaluation, export and serving."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import BirdclfError

__all__ = ["load_run", "run_info", "list_runs", "attach_data", "run_history"]


def _check(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "export.pkl").is_file():
        raise BirdclfError(f"{run_dir} is not a run folder (no export.pkl)")
    return run_dir


def load_run(run_dir: str | os.PathLike, cpu: bool = True) -> Any:
    """The exported fastai Learner of a run (pickle: only load runs you made)."""
    from fastai.learner import load_learner

    return load_learner(_check(run_dir) / "export.pkl", cpu=cpu)


def run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """config.json and metrics.json of a run."""
    run_dir = _check(run_dir)
    info: dict[str, Any] = {"run_dir": str(run_dir)}
    for name in ("config", "metrics"):
        path = run_dir / f"{name}.json"
        if path.is_file():
            info[name] = json.loads(path.read_text())
    info["model_onnx"] = str(run_dir / "model.onnx") if (run_dir / "model.onnx").is_file() else None
    return info


def list_runs(root: str | os.PathLike = "runs") -> list[Path]:
    """Run folders under `root`, oldest first."""
    root = Path(root)
    return sorted((p for p in root.iterdir() if (p / "export.pkl").is_file()), key=lambda p: p.stat().st_mtime) \
        if root.is_dir() else []


def attach_data(learn: Any, splits: dict, bs: int = 32, num_workers: int | None = None) -> Any:
    """Give a reloaded Learner DataLoaders again (the cleaner and fastai's interpretation need them)."""
    from .loaders import make_dataloaders

    dls = make_dataloaders(splits, learn.birdclf_config, bs=bs, num_workers=num_workers)
    if list(dls.vocab) != list(learn.dls.vocab):
        raise BirdclfError("these data have other classes than the run was trained on")
    learn.dls = dls.to(learn.dls.device) if hasattr(learn.dls, "device") and learn.dls.device else dls
    return learn


def run_history(run_dir: str | os.PathLike) -> Any:
    """The run's training log as a DataFrame: fastai's per-epoch history, or the cached-feature head's summary
    when only the head was trained (no fastai epochs, so no history.csv)."""
    import pandas as pd

    run_dir = Path(run_dir)
    if (run_dir / "history.csv").is_file():
        return pd.read_csv(run_dir / "history.csv")
    record = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    if "fast_head" in record:
        return pd.DataFrame([{"stage": "head on cached features", **record["fast_head"]}])
    raise BirdclfError(f"{run_dir} has no training history")
