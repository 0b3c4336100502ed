"""One training run: data, learner, lr_find, fine_tune with callbacks, export and evaluation, in a run folder."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BirdclfError
from .learner import arch_config, default_arch, make_learner

__all__ = ["TrainConfig", "TrainResult", "prepare_data", "run_lr_find", "train"]


FALLBACK_LR = 1e-3


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as config.json in the run folder."""

    data: str
    arch: str | None = None  # None: efficientnet_b3a on GPU, tf_efficientnet_lite0 on CPU
    epochs: int = 3  # unfrozen epochs (0: head only)
    freeze_epochs: int = 1  # frozen-body epochs before unfreezing (fastai fine_tune)
    lr: float | None = None  # None: lr_find's valley suggestion
    lr_mult: float = 100  # body learning rate = head learning rate / lr_mult when unfrozen (fastai fine_tune)
    bs: int = 32
    input_size: int | None = None
    presize: int | None = None
    split: str = "given"
    valid_pct: float = 0.1
    mini: int | None = None  # N train images per class
    max_classes: int | None = None
    seed: int = 42
    pretrained: bool = True
    fast_head: bool = False  # train the head on cached frozen-body features first
    head_epochs: int = 40
    label_smoothing: float = 0.1
    freeze_bn: bool = True  # body BatchNorm stays in inference mode (pretrained statistics) while training
    min_scale: float = 0.35  # item-level random crop: smallest fraction of the image kept
    batch_min_scale: float = 0.75  # batch-level random crop (aug_transforms)
    patience: int | None = 3
    lr_find_iters: int = 100
    num_workers: int | None = None
    out: str = "runs"
    name: str | None = None
    onnx: bool = True
    evaluate: bool = True
    distributed: bool = False  # set by `accelerate launch`; wraps fitting in learn.distrib_ctx()
    feature_cache: str | None = None


@dataclass
class TrainResult:
    """Where the run is and what it measured."""

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    learn: Any = None


def prepare_data(cfg: TrainConfig) -> dict[str, list[tuple[Path, str]]]:
    """Read the data folder, split it, take the mini subset if asked."""
    from ..data.layout import read_dataset
    from ..data.split import make_splits, mini_subset

    splits = make_splits(read_dataset(cfg.data), cfg.split, cfg.valid_pct, cfg.seed)
    if cfg.mini or cfg.max_classes:
        splits = mini_subset(splits, cfg.mini or 10**9, cfg.seed, cfg.max_classes)
    return splits


def run_lr_find(learn: Any, num_it: int = 100, plot: Path | None = None) -> dict[str, float]:
    """fastai lr_find; returns its suggestions and saves the plot."""
    from fastai.callback.schedule import minimum, slide, steep, valley

    num_it = max(num_it, 20)  # fastai trims the first 10% and last 5 points before suggesting
    try:
        suggestion = learn.lr_find(num_it=num_it, show_plot=False, suggest_funcs=(minimum, steep, valley, slide))
        found = {k: float(v) for k, v in suggestion._asdict().items()}
    except (IndexError, RuntimeError):  # the loss diverged before enough points were recorded
        found = {"valley": FALLBACK_LR, "note": "lr_find recorded too few points; used the fallback"}
    if plot is not None:
        _save_plot(lambda: learn.recorder.plot_lr_find(), plot)
    return found


def _save_plot(draw: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    draw()
    plt.gcf().savefig(path, dpi=110, bbox_inches="tight")
    plt.close("all")


def _run_dir(cfg: TrainConfig, arch: str) -> Path:
    name = cfg.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{arch}"
    run_dir = Path(cfg.out) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise BirdclfError(f"run folder {run_dir} already exists: choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _environment() -> dict[str, str]:
    import fastai
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "fastai": fastai.__version__,
            "timm": timm.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu"}


def train(cfg: TrainConfig) -> TrainResult:
    """One reproducible run: data, learner, (fast head), lr_find, fine_tune, export.pkl, model.onnx, evaluation."""
    import torch
    from fastai.callback.progress import CSVLogger
    from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback
    from fastai.torch_core import set_seed

    from .loaders import make_dataloaders

    timings: dict[str, float] = {}
    start = time.perf_counter()
    set_seed(cfg.seed, reproducible=True)
    arch = cfg.arch or default_arch()
    splits = prepare_data(cfg)
    labels = sorted({label for _, label in splits["train"]})
    config = arch_config(arch, labels, cfg.input_size)
    dls = make_dataloaders(splits, config, bs=cfg.bs, presize=cfg.presize, num_workers=cfg.num_workers,
                           seed=cfg.seed, min_scale=cfg.min_scale, batch_min_scale=cfg.batch_min_scale)
    run_dir = _run_dir(cfg, arch)
    learn = make_learner(dls, arch, config, pretrained=cfg.pretrained, path=run_dir,
                         label_smoothing=cfg.label_smoothing, freeze_bn=cfg.freeze_bn)
    if torch.cuda.is_available():
        learn.to_fp16()
    timings["setup_s"] = time.perf_counter() - start
    record: dict[str, Any] = {"config": asdict(cfg) | {"arch": arch}, "weights": learn.weights_source,
                              "environment": _environment(), "classes": len(dls.vocab),
                              "images": {k: len(v) for k, v in splits.items()}}
    _write_json(run_dir / "config.json", record)
    (run_dir / "labels.txt").write_text("\n".join(dls.vocab) + "\n")

    cbs = [CSVLogger(fname="history.csv", append=True)]
    if cfg.fast_head:
        from .features import fit_head_on_features

        t = time.perf_counter()
        record["fast_head"] = fit_head_on_features(learn, cfg.head_epochs, cache_dir=cfg.feature_cache,
                                                   seed=cfg.seed, label_smoothing=cfg.label_smoothing)
        timings["fast_head_s"] = time.perf_counter() - t
    lr = cfg.lr
    if cfg.epochs > 0 or (cfg.freeze_epochs > 0 and not cfg.fast_head):
        if lr is None:
            t = time.perf_counter()
            record["lr_find"] = run_lr_find(learn, cfg.lr_find_iters, run_dir / "lr_find.png")
            lr = record["lr_find"]["valley"]
            timings["lr_find_s"] = time.perf_counter() - t
        record["lr"] = lr
        fit_cbs = cbs + [SaveModelCallback(monitor="accuracy", fname="best", with_opt=False)]
        if cfg.patience:
            fit_cbs.append(EarlyStoppingCallback(monitor="accuracy", patience=cfg.patience))
        t = time.perf_counter()
        freeze_epochs = 0 if cfg.fast_head else cfg.freeze_epochs
        if cfg.distributed:
            import fastai.distributed  # noqa: F401  (adds Learner.distrib_ctx; needs `accelerate`)

            with learn.distrib_ctx():
                _fit(learn, cfg.epochs, lr, freeze_epochs, fit_cbs, cfg.lr_mult)
        else:
            _fit(learn, cfg.epochs, lr, freeze_epochs, fit_cbs, cfg.lr_mult)
        timings["fine_tune_s"] = time.perf_counter() - t
        if len(learn.recorder.values):
            _save_plot(lambda: learn.recorder.plot_loss(), run_dir / "loss.png")
    learn.to_fp32()
    learn.model.cpu()
    learn.dls.cpu()
    record["valid"] = _valid_metrics(learn)
    learn.export(run_dir / "export.pkl")
    result = TrainResult(run_dir, {"valid": record["valid"]}, timings, learn)
    if cfg.onnx:
        from .export import export_learner

        t = time.perf_counter()
        report = export_learner(learn, run_dir / "model.onnx", model_name=f"birdclf-{arch}", version=run_dir.name)
        record["onnx"] = report.to_dict()
        timings["onnx_export_s"] = time.perf_counter() - t
    if cfg.evaluate and splits.get("test"):
        from .evaluate import evaluate_learner

        t = time.perf_counter()
        result.metrics["test"] = evaluate_learner(learn, splits["test"], run_dir / "evaluation")
        timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start
    record["timings"] = timings
    _write_json(run_dir / "config.json", record)
    _write_json(run_dir / "metrics.json", result.metrics | {"timings": timings})
    return result


def _fit(learn: Any, epochs: int, lr: float, freeze_epochs: int, cbs: list, lr_mult: float = 100) -> None:
    """fastai fine_tune; without frozen epochs (head already trained on cached features) only its unfrozen phase."""
    if epochs > 0 and freeze_epochs > 0:
        learn.fine_tune(epochs, base_lr=lr, freeze_epochs=freeze_epochs, lr_mult=lr_mult, cbs=cbs)
    elif epochs > 0:
        base_lr = lr / 2  # what fine_tune uses after its frozen phase
        learn.unfreeze()
        learn.fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start=0.3, div=5.0, cbs=cbs)
    elif freeze_epochs > 0:
        learn.fit_one_cycle(freeze_epochs, lr, cbs=cbs)


def _valid_metrics(learn: Any) -> dict[str, float]:
    values = learn.validate()
    names = ["valid_loss"] + [m.name for m in learn.metrics]
    return {name: float(v) for name, v in zip(names, values)}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
