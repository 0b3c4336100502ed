"""Run folders: everything one training run produced, reloadable for evaluation, export and serving.

Runs saved by birdclf 0.1, when the package was flat (`birdclf.loaders`, `birdclf.training.top5_accuracy`, ...),
still load: `load_run` maps the class paths pickled in their export.pkl onto today's modules, and registers the old
module names as aliases of the new modules (fastai's transforms keep type hints as strings such as
"birdclf.loaders.BirdImage" and resolve them later).
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BirdclfError

__all__ = ["Run", "open_run", "load_run", "list_runs", "attach_data", "run_history", "MOVED",
           "OLD_MODULES"]

# birdclf 0.1 module -> the module that holds its contents today.
OLD_MODULES: dict[str, str] = {
    "birdclf.loaders": "birdclf.training.loaders",
    "birdclf.callbacks": "birdclf.training.callbacks",
    "birdclf.features": "birdclf.training.features",
    "birdclf.imaging": "birdclf.serving.imaging",
    "birdclf.inference": "birdclf.serving.predictor",
}
# Names of 0.1 modules that still exist as packages today -> where the name lives now.
MOVED: dict[tuple[str, str], str] = {("birdclf.training", "top5_accuracy"): "birdclf.training.learner"}


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler that finds classes and functions at their new place after the package was reorganised."""

    def find_class(self, module: str, name: str) -> Any:
        module = MOVED.get((module, name)) or OLD_MODULES.get(module, module)
        return super().find_class(module, name)


def _alias_old_modules() -> None:
    """Make the 0.1 module names importable as aliases (for type hints fastai stored as strings)."""
    for old, new in OLD_MODULES.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)


_pickle_module = types.ModuleType("birdclf_pickle")
_pickle_module.__dict__.update({k: getattr(pickle, k) for k in ("load", "loads", "dump", "dumps", "Pickler",
                                                                 "UnpicklingError", "HIGHEST_PROTOCOL")})
_pickle_module.Unpickler = _Unpickler  # type: ignore[attr-defined]


def _check(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "export.pkl").is_file():
        raise BirdclfError(f"{run_dir} is not a run folder (no export.pkl)")
    return run_dir


def load_run(run_dir: str | os.PathLike, cpu: bool = True) -> Any:
    """The exported fastai Learner of a run, from this version or 0.1 (pickle: only load runs you made)."""
    import warnings

    from fastai.learner import load_learner

    _alias_old_modules()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*load_learner.*insecure pickle.*")
        return load_learner(_check(run_dir) / "export.pkl", cpu=cpu, pickle_module=_pickle_module)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class Run:
    """One run folder: its training record (config.json), metrics and files, without digging in nested dicts."""

    path: Path
    record: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        """The TrainConfig the run used."""
        return dict(self.record.get("config", {}))

    @property
    def arch(self) -> str:
        """The timm architecture."""
        return str(self.config.get("arch", ""))

    @property
    def data(self) -> str:
        """The data folder the run was trained on."""
        return str(self.config.get("data", ""))

    @property
    def name(self) -> str:
        """The run folder's name (also the exported model's version)."""
        return self.path.name

    @property
    def onnx_path(self) -> Path | None:
        """The run's verified model.onnx, if exported."""
        path = self.path / "model.onnx"
        return path if path.is_file() else None

    @property
    def labels(self) -> list[str]:
        """The classes, in the model's output order."""
        path = self.path / "labels.txt"
        return path.read_text().splitlines() if path.is_file() else []

    def learner(self, cpu: bool | None = None) -> Any:
        """The exported fastai Learner, on the GPU when there is one (`cpu=None`): evaluation, fastai's
        interpretation and the cleaner (predictions over the whole training set) then run there."""
        import torch
        from fastai.torch_core import default_device

        if cpu is None:
            cpu = not torch.cuda.is_available()
        learn = load_run(self.path, cpu=cpu)
        if not cpu:
            device = default_device()
            learn.model.to(device)
            learn.dls.to(device)  # exported on the CPU, so its DataLoaders still say so
        return learn

    def splits(self, data: str | os.PathLike | None = None) -> dict[str, list[tuple[Path, str]]]:
        """The train/valid/test splits the run was trained and evaluated on, rebuilt from its record (split
        strategy, seed, mini subset, class limit); `data`: the same layout elsewhere (e.g. after cleaning)."""
        from dataclasses import fields

        from .trainer import TrainConfig, prepare_data

        known = {f.name for f in fields(TrainConfig)}
        config = {k: v for k, v in self.config.items() if k in known} | ({"data": str(data)} if data else {})
        if not config.get("data"):
            raise BirdclfError(f"{self.path} does not record its data folder: pass data=")
        return prepare_data(TrainConfig(**config))

    def history(self) -> Any:
        """The training log as a DataFrame (see `run_history`)."""
        return run_history(self.path)

    def __repr__(self) -> str:
        test = self.metrics.get("test", {})
        score = f", test accuracy {test['accuracy']:.3f}" if "accuracy" in test else ""
        return f"Run({str(self.path)!r}, arch={self.arch!r}{score})"


def open_run(run_dir: str | os.PathLike) -> Run:
    """The Run in `run_dir`."""
    run_dir = _check(run_dir)
    return Run(run_dir, _read_json(run_dir / "config.json"), _read_json(run_dir / "metrics.json"))


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
    learn.dls = dls.to(next(learn.model.parameters()).device)  # batches go where the model is
    return learn


def run_history(run_dir: str | os.PathLike) -> Any:
    """The run's training log as a DataFrame: fastai's per-epoch history, or the cached-feature head's summary
    when only the head was trained (no fastai epochs, so no history.csv)."""
    import pandas as pd

    run_dir = Path(run_dir)
    if (run_dir / "history.csv").is_file():  # fastai's CSVLogger repeats its header line at every fit
        history = pd.read_csv(run_dir / "history.csv")
        history = history[history["epoch"].astype(str) != "epoch"].reset_index(drop=True)
        for column in history.columns.drop("time", errors="ignore"):
            history[column] = pd.to_numeric(history[column])
        return history
    record = _read_json(run_dir / "config.json")
    if "fast_head" in record:
        return pd.DataFrame([{"stage": "head on cached features", **record["fast_head"]}])
    raise BirdclfError(f"{run_dir} has no training history")
