"""One training run: data, learner, lr_find, fine_tune with callbacks, export and evaluation, in a run folder."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import BirdclfError
from .distributed import distributed_fit, processes
from .learner import arch_config, default_arch, make_learner

__all__ = ["TrainConfig", "TrainResult", "TrainingRun", "prepare_data", "recipe", "run_lr_find", "train",
           "unfrozen_schedule", "PRECISIONS", "GPU_EPOCHS", "CPU_EPOCHS"]

PRECISIONS = ("fp32", "fp16", "bf16")
TRAINED = "trained"  # models/trained.pth: the fitted weights, saved when a run fails after training
OTHER_BIRD = "other_bird"  # models/other_bird.pth: beside them, the other-bird class's Linear (--other-birds)
logger = logging.getLogger(__name__)


FALLBACK_LR = 1e-3
GPU_EPOCHS = 8  # the recipe's unfrozen epochs on a GPU (efficientnet_b3a, fp16, fastai's frozen epoch first)
CPU_EPOCHS = 3  # ... and on a CPU (tf_efficientnet_lite0, the head trained on cached features first)
# fastai fine_tune's unfrozen phase: half the base rate, discriminative rates over lr_mult, this one-cycle shape
UNFROZEN_PCT_START = 0.3
UNFROZEN_DIV = 5.0


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A TrainConfig field with its `birdclf train` flag's help (and flag options: choices, aliases)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as config.json in the run folder. Each field is a flag of
    `birdclf train` and `birdclf compare` (--name-with-dashes; booleans also as --no-name), with this help."""

    data: str = field(metadata={"help": "data folder (Kaggle layout or one folder per class)"})
    arch: str | None = _option(None, "timm architecture (default: efficientnet_b3a on GPU, tf_efficientnet_lite0 "
                                     "on CPU)")
    epochs: int = _option(3, "unfrozen epochs (0: head only; default 8 on GPU, 3 on CPU)")
    freeze_epochs: int = _option(1, "frozen-body epochs before unfreezing (fastai fine_tune)")
    lr: float | None = _option(None, "learning rate (default: lr_find's valley)")
    lr_mult: float = _option(100, "unfrozen body lr = lr / lr_mult (fastai fine_tune)")
    bs: int = _option(32, "batch size")
    input_size: int | None = _option(None, "training crop in pixels (default: the architecture's)")
    presize: int | None = _option(None, "train item size before the batch crop (default: input size x 1.3)")
    item_crop: str = _option("resize", "train item transform: 'resize' (shorter side to presize, centre crop: "
                                       "Kaggle's photos are tight crops already) or 'random' (a random crop "
                                       "keeping at least --min-scale)", choices=("resize", "random"))
    split: str = _option("given", "'given': the data's train/valid/test folders; 'random': a seeded split",
                         choices=("given", "random"))
    valid_pct: float = _option(0.1, "validation share of a random split")
    mini: int | None = _option(None, "N train images per class (a quick run)")
    max_classes: int | None = _option(None, "only the first N classes (a quick run)")
    seed: int = _option(42, "seed for the split, the subset and training")
    deterministic: bool = _option(False, "bit-for-bit repeatable GPU runs (turns cudnn.benchmark off: slower); CPU "
                                         "runs always are")
    pretrained: bool = _option(True, "start from ImageNet weights")
    fast_head: bool = _option(False, "train the head on cached frozen-body features first (the recipe's default "
                                     "on CPU)")
    head_epochs: int = _option(40, "epochs of the head on cached features (--fast-head)")
    distant_views: int = _option(2, "distant views of each train photo the head on cached features also learns "
                                    "from (--fast-head): the photo shrunk and cropped as the find stage sees a far "
                                    "bird (0: none)")
    other_birds: str | None = _option(None, "folder of photos of bird species outside the data (any layout): the "
                                            "head learns an 'other bird' class from them, so that species it was "
                                            "not trained on are held back as unsure (--fast-head --epochs 0)")
    label_smoothing: float = _option(0.1, "label smoothing of the cross-entropy loss")
    freeze_bn: bool = _option(True, "the body's BatchNorm keeps its pretrained statistics while training",
                              aliases={"--train-bn-stats": False})
    min_scale: float = _option(0.35, "item random crop (--item-crop random): smallest fraction of the image kept")
    batch_min_scale: float = _option(0.75, "batch random crop (aug_transforms)")
    patience: int | None = _option(None, "stop when the valid loss has not improved for N epochs (default: never: "
                                         "one-cycle anneals the learning rate in its last epochs, and the best "
                                         "epoch is kept anyway)")
    lr_find_iters: int = _option(100, "lr_find iterations")
    num_workers: int | None = _option(None, "data loader workers (default: fastai's)")
    out: str = _option("runs", "runs folder")
    name: str | None = _option(None, "run folder name (default: time-arch)")
    onnx: bool = _option(True, "export the verified ONNX model")
    evaluate: bool = _option(True, "evaluate on the test split")
    distributed: bool = _option(False, "several GPUs: run under `accelerate launch --multi_gpu --num_processes N "
                                       "-m birdclf train ...` (needs birdclf[dist])")
    feature_cache: str | None = _option(None, "folder for cached body features (--fast-head)")
    precision: str | None = _option(None, "default: fp16 mixed precision on a GPU, fp32 on CPU (bf16 runs on CPU "
                                          "too)", choices=PRECISIONS)

    def __post_init__(self) -> None:
        if self.precision not in (None, *PRECISIONS):
            raise BirdclfError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        # Absolute from the start: fastai joins file names onto learn.path, and a notebook may change directory.
        self.data, self.out = _absolute(self.data), _absolute(self.out)
        self.feature_cache, self.other_birds = _absolute(self.feature_cache), _absolute(self.other_birds)
        if self.distant_views < 0:
            raise BirdclfError(f"--distant-views counts views per train photo (0: none), got {self.distant_views}")
        if self.other_birds and not (self.fast_head and self.epochs == 0):
            raise BirdclfError("--other-birds trains the other-bird class with the head on cached features: it needs "
                               "--fast-head --epochs 0 (TrainConfig fast_head=True, epochs=0; a fine-tuned body "
                               "would leave that class behind)")
        if self.other_birds and not self.pretrained:
            raise BirdclfError("--other-birds needs the pretrained ImageNet weights: the other-bird class is exported "
                               "beside the bird gate, and a model without them (--no-pretrained) has no gate")


def _absolute(path: str | os.PathLike | None) -> Any:
    """`path` as an absolute path string (relative to the working directory now); None and '' stay as they are."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def recipe(data: str | Path, gpu: bool | None = None, **overrides: Any) -> TrainConfig:
    """The default recipe (the notebooks' and `birdclf train`'s): on a GPU efficientnet_b3a, fastai's frozen epoch
    then GPU_EPOCHS unfrozen ones in fp16; on a CPU tf_efficientnet_lite0, the head trained on cached body
    features, then CPU_EPOCHS unfrozen epochs. `overrides` that are None keep the recipe's value."""
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    from ..constants import CPU_ARCH, GPU_ARCH

    base: dict[str, Any] = {"data": str(data), "arch": GPU_ARCH if gpu else CPU_ARCH,
                            "epochs": GPU_EPOCHS if gpu else CPU_EPOCHS, "fast_head": not gpu}
    return TrainConfig(**(base | {k: v for k, v in overrides.items() if v is not None}))


def unfrozen_schedule(lr: float, lr_mult: float) -> dict[str, Any]:
    """fit_one_cycle's arguments for fine_tune's unfrozen phase, when the frozen phase was done another way (the
    cached-feature head): `learn.fit_one_cycle(epochs, **unfrozen_schedule(lr, lr_mult))`."""
    base_lr = lr / 2  # what fine_tune uses after its frozen phase
    return {"lr_max": slice(base_lr / lr_mult, base_lr), "pct_start": UNFROZEN_PCT_START, "div": UNFROZEN_DIV}


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
    """Save what a fastai plotting method draws on pyplot's current figure (the backend is left as it is, so a
    notebook keeps showing its plots inline)."""
    import matplotlib.pyplot as plt

    figures_before = set(plt.get_fignums())
    draw()
    plt.gcf().savefig(path, dpi=110, bbox_inches="tight")
    for number in set(plt.get_fignums()) - figures_before:
        plt.close(number)


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def seed_run(seed: int, deterministic: bool = False, gpu: bool = False) -> None:
    """Seed Python, numpy and torch. On a GPU, cudnn.benchmark stays on (the fastest convolution algorithms for
    the fixed input size) unless `deterministic` asks for bit-for-bit repeats; CPU runs always repeat."""
    import torch
    from fastai.torch_core import set_seed

    set_seed(seed, reproducible=deterministic or not gpu)
    if gpu:
        torch.backends.cudnn.benchmark = not deterministic


def _run_dir(cfg: TrainConfig, arch: str, resume: bool = False) -> Path:
    name = cfg.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{arch}"
    run_dir = Path(cfg.out) / name
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise BirdclfError(f"run folder {run_dir} already exists: choose another name (TrainConfig.name, --name)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _environment() -> dict[str, str]:
    import fastai
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "fastai": fastai.__version__,
            "timm": timm.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu"}


class TrainingRun:
    """One run, step by step: the notebooks call the steps and fastai's own Learner methods between them;
    `train` runs them all. Everything lands in `run_dir`."""

    def __init__(self, cfg: TrainConfig, _resume: bool = False) -> None:
        """Seed, data, DataLoaders, the Learner (ImageNet weights, frozen body), the run folder and config.json."""

        from .loaders import make_dataloaders

        self.cfg = cfg
        self.procs = processes(cfg.distributed)
        self.timings: dict[str, float] = {}
        self._started = time.perf_counter()
        gpu = _on_gpu()
        seed_run(cfg.seed, cfg.deterministic, gpu)
        self.arch = cfg.arch or default_arch()
        self.splits = prepare_data(cfg)
        labels = sorted({label for _, label in self.splits["train"]})
        config = arch_config(self.arch, labels, cfg.input_size)
        self.dls = make_dataloaders(self.splits, config, bs=cfg.bs, presize=cfg.presize, num_workers=cfg.num_workers,
                                    seed=cfg.seed, min_scale=cfg.min_scale, batch_min_scale=cfg.batch_min_scale,
                                    item_crop=cfg.item_crop)
        self.run_dir = self.procs.shared(lambda: _run_dir(cfg, self.arch, resume=_resume))  # one folder per run
        self.learn = make_learner(self.dls, self.arch, config, pretrained=cfg.pretrained, path=self.run_dir,
                                  label_smoothing=cfg.label_smoothing, freeze_bn=cfg.freeze_bn)
        if gpu:
            from fastai.callback.channelslast import ChannelsLast

            self.learn.add_cb(ChannelsLast())  # convolutions in NHWC: faster on tensor cores (fp16 and bf16)
        self.precision = cfg.precision or ("fp16" if gpu else "fp32")
        if self.precision != "fp32":
            from .callbacks import DeviceMixedPrecision

            self.learn.add_cb(DeviceMixedPrecision(self.precision))
        self._body_at_start = _fingerprint(self.learn.model[0])
        self.timings["setup_s"] = time.perf_counter() - self._started
        self.record: dict[str, Any] = {
            "config": asdict(cfg) | {"arch": self.arch}, "weights": self.learn.weights_source,
            "precision": self.precision, "environment": _environment(), "processes": self.procs.world,
            "classes": len(self.dls.vocab),
            "images": {k: len(v) for k, v in self.splits.items()}}
        if not _resume and self.procs.main:
            _write_json(self.run_dir / "config.json", self.record)
            (self.run_dir / "labels.txt").write_text("\n".join(self.dls.vocab) + "\n")

    @classmethod
    def resume(cls, run_dir: str | os.PathLike) -> TrainingRun:
        """A run that stopped after (or during) training, rebuilt from its config.json with its fitted weights
        (models/trained.pth, else the best epoch's models/best.pth): call `finish()` to calibrate, evaluate and
        export it (`birdclf export RUN` does)."""
        run_dir = Path(_absolute(run_dir))
        weights = next((w for w in (TRAINED, "best") if (run_dir / "models" / f"{w}.pth").is_file()), None)
        if not (run_dir / "config.json").is_file() or weights is None:
            raise BirdclfError(f"{run_dir} has no trained weights to finish (models/{TRAINED}.pth or models/best.pth "
                               "and config.json): train again")
        previous = json.loads((run_dir / "config.json").read_text())
        known = {f.name for f in fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in previous["config"].items() if k in known}
                          | {"out": str(run_dir.parent), "name": run_dir.name, "distributed": False})
        run = cls(cfg, _resume=True)  # one process finishes it, also a run that trained on several
        labels = (run_dir / "labels.txt").read_text().splitlines() if (run_dir / "labels.txt").is_file() else []
        if labels and labels != list(run.dls.vocab):
            raise BirdclfError(f"{cfg.data} now has other classes than {run_dir} was trained on")
        run.learn.load(weights, with_opt=False)
        other = run_dir / "models" / f"{OTHER_BIRD}.pth"
        if other.is_file():  # the other-bird class's row, beside the Learner's own weights
            import torch

            state = torch.load(other, map_location="cpu", weights_only=True)
            run.learn.other_bird = torch.nn.Linear(state["weight"].shape[1], 1, bias="bias" in state)
            run.learn.other_bird.load_state_dict(state)
        run.record = previous | {k: v for k, v in run.record.items() if k not in previous}
        run.record.pop("failed", None)
        logger.info("resumed %s from models/%s.pth", run_dir, weights)
        return run

    @property
    def body_changed(self) -> bool:
        """Whether fitting moved the pretrained body (fine-tuning, or BatchNorm trained in frozen epochs), however
        the fitting was driven (here or by a notebook's own fastai calls)."""
        import torch

        return not torch.equal(_fingerprint(self.learn.model[0]), self._body_at_start)

    def __repr__(self) -> str:
        return f"TrainingRun({str(self.run_dir)!r}, arch={self.arch!r}, {len(self.dls.vocab)} classes)"

    def fit_head_on_features(self) -> dict[str, Any]:
        """The frozen phase on CPU: train the head on cached body features (seconds instead of an epoch). In a
        distributed run the main process fits it; DistributedDataParallel gives the others its weights when the
        fit starts (it broadcasts rank 0's parameters and buffers)."""
        from .features import fit_head_on_features

        def fit_here() -> dict[str, Any]:
            others = None
            if self.cfg.other_birds:
                from .other_birds import other_bird_photos

                others = other_bird_photos(self.cfg.other_birds, list(self.dls.vocab))
            return fit_head_on_features(self.learn, self.cfg.head_epochs, cache_dir=self.cfg.feature_cache,
                                        seed=self.cfg.seed, label_smoothing=self.cfg.label_smoothing,
                                        other_birds=others, distant_views=self.cfg.distant_views)

        t = time.perf_counter()
        self.record["fast_head"] = self.procs.shared(fit_here)
        if self.procs.world > 1:  # DistributedDataParallel refuses weights of other strides on other processes
            import torch

            self.learn.model.to(memory_format=torch.contiguous_format)  # feature extraction ran channels-last
        self.timings["fast_head_s"] = time.perf_counter() - t
        return self.record["fast_head"]

    def find_lr(self) -> float:
        """fastai's lr_find (plot saved as lr_find.png); returns the valley suggestion, recorded in the run."""
        t = time.perf_counter()
        self.record["lr_find"] = self.procs.shared(  # on the main process; the others use its suggestion
            lambda: run_lr_find(self.learn, self.cfg.lr_find_iters, self.run_dir / "lr_find.png"))
        self.timings["lr_find_s"] = time.perf_counter() - t
        return self.record["lr_find"]["valley"]

    def callbacks(self) -> list:
        """The callbacks for fitting: CSV history, keep the best epoch; with `patience`, stop when the valid loss
        stalls (not accuracy: it plateaus for epochs while one-cycle is still annealing)."""
        from fastai.callback.progress import CSVLogger
        from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback

        cbs = [SaveModelCallback(monitor="accuracy", fname="best", with_opt=False)]  # fastai saves on rank 0 only
        if self.procs.main:
            cbs.insert(0, CSVLogger(fname="history.csv", append=True))
        if self.cfg.patience:
            cbs.append(EarlyStoppingCallback(monitor="valid_loss", patience=self.cfg.patience))
        return cbs

    def fit(self, lr: float | None = None) -> None:
        """fine_tune (frozen epochs, then the unfrozen network with discriminative rates); after the fast head,
        only fine_tune's unfrozen phase. `lr` default: the config's, else lr_find's valley."""
        cfg = self.cfg
        if cfg.epochs <= 0 and (cfg.freeze_epochs <= 0 or cfg.fast_head):
            return
        lr = lr or cfg.lr or self.find_lr()
        self.record["lr"] = lr
        freeze_epochs = 0 if cfg.fast_head else cfg.freeze_epochs
        t = time.perf_counter()
        with distributed_fit(self.learn, self.procs):
            _fit(self.learn, cfg.epochs, lr, freeze_epochs, self.callbacks(), cfg.lr_mult)
        self.timings["fine_tune_s"] = time.perf_counter() - t

    def finish(self, lr: float | None = None) -> TrainResult:
        """After fitting: `calibrate()`, `evaluate()` and `export()`. `lr`: the learning rate used, when a notebook
        called fine_tune itself. If a step fails, the fitted weights are kept (models/trained.pth) and the error
        says how to finish (`birdclf export RUN`): hours of GPU training are never lost to a late error."""
        if lr is not None:
            self.record["lr"] = lr
        try:
            with self.procs.alone():  # a distributed run's main process finishes it alone
                calibration = self.calibrate()
                test = self.evaluate(calibration)
                return self.export(calibration, test)
        except Exception as exc:
            raise BirdclfError(f"the run failed after training ({type(exc).__name__}: {exc}); "
                               f"{self.save_trained()}") from exc

    def save_trained(self) -> str:
        """Save the fitted weights as models/trained.pth and note the failure in config.json; says how to finish."""
        try:
            self.learn.save(TRAINED, with_opt=False)
            if getattr(self.learn, "other_bird", None) is not None:
                import torch

                torch.save(self.learn.other_bird.state_dict(), self.run_dir / "models" / f"{OTHER_BIRD}.pth")
            self.record["failed"] = "after training"
            _write_json(self.run_dir / "config.json", self.record)
        except Exception as exc:  # the disk itself may be what failed
            best = self.run_dir / "models" / "best.pth"
            kept = f"the best epoch's weights are in {best}" if best.is_file() else "no weights could be kept"
            return f"saving the weights failed too ({exc}); {kept}"
        return (f"the trained weights are saved in {self.run_dir / 'models' / f'{TRAINED}.pth'}: "
                f"fix the cause and finish with `birdclf export {self.run_dir}`")

    def calibrate(self) -> Any:
        """Back to fp32; valid metrics; the bird gate that will ship (the fixed branch if the body moved);
        calibration: temperature and species threshold on out-of-fold predictions over train+valid when the head
        was fitted on cached features (a Wilson bound on precision), else on the valid split; gate threshold on the
        valid split."""
        from ..constants import OTHER_BIRD_PASS
        from .calibration import OOF_BOUND, OOF_TARGET_PRECISION, calibrate
        from .evaluate import label_targets, model_outputs

        learn = self.learn
        if len(getattr(learn.recorder, "values", None) or ()):  # fastai records values only once it fitted
            _save_plot(lambda: learn.recorder.plot_loss(), self.run_dir / "loss.png")
        learn.to_fp32()  # metrics, calibration and test evaluation on the training device (the GPU on Colab)
        self.record["valid"] = _valid_metrics(learn)
        if getattr(learn, "bird_gate", None) is not None and self.body_changed:
            from .gate import fixed_gate  # the fine-tuned body moved: the shared gate drifts (see gate.py)

            learn.bird_gate = fixed_gate(learn.birdclf_config.mean, learn.birdclf_config.std)
        self.record["gate"] = type(getattr(learn, "bird_gate", None)).__name__
        self._check_other_bird()
        t = time.perf_counter()
        valid = self.splits["valid"]
        logits, bird = model_outputs(learn, [p for p, _ in valid])
        out_of_fold = self._out_of_fold_logits()
        other_pass = OTHER_BIRD_PASS if getattr(learn, "other_bird", None) is not None else None
        if out_of_fold is None:
            calibration = calibrate(logits, label_targets(valid, list(learn.dls.vocab)), bird, other_pass=other_pass)
        else:
            calibration = calibrate(*out_of_fold, bird, target_precision=OOF_TARGET_PRECISION, bound=OOF_BOUND,
                                    source="out-of-fold", other_pass=other_pass)
        logger.info("calibration: %s", calibration.summary())
        self.record["calibration"] = calibration.to_dict()
        self.timings["calibrate_s"] = time.perf_counter() - t
        return calibration

    def _check_other_bird(self) -> None:
        """Drop the other-bird class (with a warning, noted in config.json) when the layers it sits on were trained
        further without it (a notebook fine-tuned after the cached-feature head): it would answer stale."""
        cached = getattr(self.learn, "cached_features", None)
        if getattr(self.learn, "other_bird", None) is None:
            return
        if self.body_changed or (cached is not None and not cached.describes(self.learn.model[1][2:])):
            logger.warning("the model was trained further after the head with its other-bird class: exported "
                           "without that class (train with --fast-head --epochs 0 to keep it)")
            self.learn.other_bird = None
            extra = {k: v for k, v in self.learn.birdclf_config.extra.items() if k != "other_bird"}
            self.learn.birdclf_config = replace(self.learn.birdclf_config, extra=extra)
            self.record["other_bird"] = "dropped: the model was trained further without the other-bird photos"

    def _out_of_fold_logits(self) -> tuple[Any, Any] | None:
        """(logits, labels) over train+valid from heads fitted without each photo's fold, when the model is still
        the head fitted on cached features over the pretrained body (cheap to refit); None otherwise."""
        from .calibration import OOF_FOLDS, OOF_MAX_PHOTOS
        from .features import out_of_fold_logits

        cached = getattr(self.learn, "cached_features", None)
        if cached is None or self.body_changed or not cached.describes(self.learn.model[1][2:]):
            return None
        if len(cached.y_train) + len(cached.y_valid) > OOF_MAX_PHOTOS:
            return None
        t = time.perf_counter()
        out = out_of_fold_logits(cached, OOF_FOLDS)
        self.timings["out_of_fold_s"] = time.perf_counter() - t
        return out

    def evaluate(self, calibration: Any = None) -> dict[str, Any]:
        """Test metrics with verdicts, plots and per-class report in evaluation/ ({} without a test split)."""
        from .evaluate import evaluate_learner

        if not (self.cfg.evaluate and self.splits.get("test")):
            return {}
        t = time.perf_counter()
        test = evaluate_learner(self.learn, self.splits["test"], self.run_dir / "evaluation", calibration=calibration)
        self.timings["evaluate_s"] = time.perf_counter() - t
        return test

    def export(self, calibration: Any, test: dict[str, Any] | None = None) -> TrainResult:
        """The model card; export.pkl and the verified model.onnx (config, calibration and card inside)."""
        from .card import build_card, write_card

        learn, cfg = self.learn, self.cfg
        result = TrainResult(self.run_dir, {"valid": self.record["valid"]}, self.timings, learn)
        if test:
            result.metrics["test"] = test
        shown = {k: v for k, v in (test or {}).items() if k != "top_losses"}
        name = f"birdclf-{self.arch}"
        from .gate import FixedGate

        gate = getattr(learn, "bird_gate", None)
        card = build_card(name, self.run_dir.name, self.arch, learn.weights_source, cfg.data, cfg.split,
                          len(learn.dls.vocab), self.record["images"], shown, calibration.to_dict(),
                          gate=None if gate is None else "fixed" if isinstance(gate, FixedGate) else "shared",
                          other_birds=self.record.get("fast_head", {}).get("other_bird_photos")
                          if getattr(learn, "other_bird", None) is not None else None)
        write_card(self.run_dir, card)
        updates: dict[str, Any] = {"temperature": calibration.temperature,
                                   "species_threshold": calibration.species_threshold, "card": card}
        if calibration.bird_threshold is not None:
            updates["bird_threshold"] = calibration.bird_threshold
        if calibration.other_threshold is not None:
            from ..serving.other_bird import OtherBird

            rule = OtherBird(calibration.other_threshold, calibration.other_pass or 0.0,
                             int(self.record.get("fast_head", {}).get("other_bird_photos", 0)))
            updates["extra"] = dict(learn.birdclf_config.extra) | {"other_bird": rule.to_dict()}
        learn.birdclf_config = replace(learn.birdclf_config, **updates)
        import torch

        learn.model.cpu()  # exported from the CPU: export.pkl loads anywhere, and ONNX parity runs on CPU
        learn.model.to(memory_format=torch.contiguous_format)  # trained channels-last on a GPU
        learn.dls.cpu()
        cached = learn.__dict__.pop("cached_features", None)  # features stay out of export.pkl
        try:
            learn.export("export.pkl")  # a file name: fastai writes it under learn.path, the run folder
        finally:
            if cached is not None:
                learn.cached_features = cached
        if cfg.onnx:
            from .export import export_learner

            t = time.perf_counter()
            report = export_learner(learn, self.run_dir / "model.onnx", model_name=name, version=self.run_dir.name)
            self.record["onnx"] = report.to_dict()
            self.timings["onnx_export_s"] = time.perf_counter() - t
        self.timings["total_s"] = time.perf_counter() - self._started
        self.record["timings"] = self.timings
        _write_json(self.run_dir / "config.json", self.record)
        _write_json(self.run_dir / "metrics.json", result.metrics | {"timings": self.timings})
        return result


def train(cfg: TrainConfig) -> TrainResult | None:
    """One reproducible run: data, learner, (fast head), lr_find, fine_tune, export.pkl, model.onnx, evaluation.
    In a distributed run the main process finishes it and the others return None after fitting."""
    run = TrainingRun(cfg)
    try:
        if cfg.fast_head:
            run.fit_head_on_features()
        try:
            run.fit()
        except Exception as exc:
            best = run.run_dir / "models" / "best.pth"
            if not best.is_file():
                raise
            raise BirdclfError(f"training stopped ({type(exc).__name__}: {exc}); the best epoch so far is saved in "
                               f"{best}: finish with `birdclf export {run.run_dir}`, or train again") from exc
        return run.finish() if run.procs.main else None
    finally:
        run.procs.close()


def _fit(learn: Any, epochs: int, lr: float, freeze_epochs: int, cbs: list, lr_mult: float = 100) -> None:
    """fastai fine_tune; without frozen epochs (head already trained on cached features) only its unfrozen phase."""
    if epochs > 0 and freeze_epochs > 0:
        learn.fine_tune(epochs, base_lr=lr, freeze_epochs=freeze_epochs, lr_mult=lr_mult, cbs=cbs)
    elif epochs > 0:
        learn.unfreeze()
        learn.fit_one_cycle(epochs, cbs=cbs, **unfrozen_schedule(lr, lr_mult))
    elif freeze_epochs > 0:
        learn.fit_one_cycle(freeze_epochs, lr, cbs=cbs)


def _fingerprint(module: Any) -> Any:
    """One float64 sum per parameter tensor: changes when any weight changes."""
    import torch

    with torch.no_grad():
        return torch.stack([p.detach().double().sum().cpu() for p in module.parameters()])


def _valid_metrics(learn: Any) -> dict[str, float]:
    values = learn.validate()
    names = ["valid_loss"] + [m.name for m in learn.metrics]
    return {name: float(v) for name, v in zip(names, values)}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
