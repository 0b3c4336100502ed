"""The fast CPU path: run the frozen body once, cache its pooled features, train the fastai head on the cache."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .other_birds import split_head, widen_head

__all__ = ["feature_key", "extract_features", "fit_head_on_features", "HeadFit", "CachedFeatures", "train_head",
           "head_logits", "fold_of", "out_of_fold_logits"]


def feature_key(learn: Any, paths: list[Path], flip: bool) -> str:
    """Cache key: architecture, the body's current weights, transform and the exact files (path, size, mtime)."""
    h = hashlib.sha256()
    h.update(json.dumps([learn.birdclf_config.arch, getattr(learn, "weights_source", ""), flip,
                         learn.birdclf_config.input_size, learn.birdclf_config.resize_size]).encode())
    body = list(learn.model[0].parameters())
    for tensor in (body[0], body[-1]):  # a fine-tuned body changes these, so its features are not reused
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def extract_features(learn: Any, paths: list[Path], flip: bool = False, cache_dir: str | os.PathLike | None = None,
                     bs: int = 64) -> np.ndarray:
    """Pooled body features of images under the validation transform (plus a mirrored copy if `flip`)."""
    import torch

    cache = Path(cache_dir) / f"{feature_key(learn, paths, flip)}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        return np.load(cache)
    body, pool = learn.model[0], learn.model[1][:2]  # AdaptiveConcatPool2d + Flatten have no parameters
    dl = learn.dls.test_dl(paths, bs=bs)
    was_training = learn.model.training
    learn.model.eval()
    body.to(memory_format=torch.channels_last)  # measured 77 -> 106 img/s for lite0 on 2 CPU cores
    originals, mirrored = [], []
    with torch.inference_mode():
        for (xb,) in dl:
            xb = xb.to(next(body.parameters()).device).contiguous(memory_format=torch.channels_last)
            originals.append(pool(body(xb)).float().cpu().numpy())
            if flip:
                mirrored.append(pool(body(xb.flip(-1))).float().cpu().numpy())
    learn.model.train(was_training)
    feats = np.concatenate(originals + mirrored)  # all originals, then all mirrored copies
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, feats)
    return feats


def fit_head_on_features(learn: Any, epochs: int = 40, lr: float = 4e-3, bs: int = 128, flip: bool = True,
                         cache_dir: str | os.PathLike | None = None, seed: int = 42, wd: float | None = 0.1,
                         label_smoothing: float = 0.1, other_birds: list[Path] | None = None,
                         distant_views: int = 0) -> dict[str, Any]:
    """Train the Learner's own head (after pooling) with fastai's one-cycle on cached features; the head is
    trained in place, so the Learner then predicts, exports and fine-tunes as usual. The features are kept on the
    Learner (`learn.cached_features`) for out-of-fold calibration. With `other_birds` (photos of species outside
    the data), the head learns one more class from them, "other bird", kept as `learn.other_bird` (see
    birdclf.training.other_birds). With `distant_views`, it also learns from that many distant views of each train
    photo (birdclf.training.views), as the find stage's closer look shows a far bird."""
    train_ds, valid_ds = learn.dls.train_ds, learn.dls.valid_ds
    y_train = np.array([int(train_ds.tls[1][i]) for i in range(len(train_ds))])  # labels only, no image decode
    y_valid = np.array([int(valid_ds.tls[1][i]) for i in range(len(valid_ds))])
    train_paths, valid_paths = list(train_ds.items), list(valid_ds.items)
    x_train = extract_features(learn, train_paths, flip=flip, cache_dir=cache_dir)
    x_valid = extract_features(learn, valid_paths, flip=False, cache_dir=cache_dir)
    settings = HeadFit(epochs=epochs, lr=lr, bs=bs, wd=wd, label_smoothing=label_smoothing, seed=seed,
                       distant_views=distant_views)
    head = learn.model[1][2:]
    x_other = extract_features(learn, list(other_birds), flip=flip, cache_dir=cache_dir) if other_birds else None
    x_views = _distant_features(learn, train_paths, distant_views, cache_dir, seed) if distant_views else None
    fitted = head if x_other is None else widen_head(head, seed)  # shares the head's layers: they are trained in place
    learn.cached_features = CachedFeatures(x_train, y_train, x_valid, y_valid, flip, settings, copy.deepcopy(fitted),
                                           x_other=x_other, x_views=x_views)
    x_extra, y_extra = learn.cached_features.other_rows()
    x_far, y_far = learn.cached_features.view_rows()
    metrics = train_head(fitted, np.concatenate([x_train, x_far, x_extra]),
                         np.concatenate([y_train, y_train, y_far, y_extra] if flip else [y_train, y_far, y_extra]),
                         x_valid, y_valid, settings)
    learn.other_bird = split_head(head, fitted) if x_other is not None else None  # a refit without them: none
    learn.cached_features.fitted_valid_logits = head_logits(head, x_valid)
    other = {} if x_other is None else {"other_bird_photos": len(other_birds or ())}
    views = {} if x_views is None else {"distant_view_features": int(len(x_far))}
    return {**settings.to_dict(), "train_features": int(len(x_train)), **views, **metrics,
            "feature_dim": int(x_train.shape[1]), **other}


@dataclass(frozen=True)
class HeadFit:
    """How the head is fitted on cached features (fastai one-cycle)."""

    epochs: int = 40
    lr: float = 4e-3
    bs: int = 128
    wd: float | None = 0.1
    label_smoothing: float = 0.1
    seed: int = 42
    distant_views: int = 0  # distant views of each train photo learned too (birdclf.training.views)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without the seed, as the run records it elsewhere)."""
        return {k: v for k, v in asdict(self).items() if k != "seed"}


@dataclass
class CachedFeatures:
    """The pooled features the head was fitted on: train (then their mirrored copies if `flip`) and valid."""

    x_train: np.ndarray
    y_train: np.ndarray  # one label per train photo (not per mirrored copy)
    x_valid: np.ndarray
    y_valid: np.ndarray
    flip: bool
    fit: HeadFit
    untrained_head: Any  # a copy of the head before fitting: where out-of-fold fits start from
    fitted_valid_logits: np.ndarray | None = None  # the fitted head's valid logits: is the Learner's head still it?
    x_other: np.ndarray | None = None  # photos of other species (then their mirrored copies if `flip`): one class
    x_views: np.ndarray | None = None  # distant views of the train photos: all first views, then all second, ...

    def other_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The other-bird photos' features and labels (the class after the species); none without that class."""
        if self.x_other is None:
            return self.x_train[:0], self.y_train[:0]
        return self.x_other, np.full(len(self.x_other), _out_features(self.untrained_head) - 1)

    def view_rows(self, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The distant views' features and labels (of the train photos `keep` marks, all by default)."""
        if self.x_views is None:
            return self.x_train[:0], self.y_train[:0]
        count = len(self.x_views) // len(self.y_train)
        keep = np.ones(len(self.y_train), bool) if keep is None else keep
        return self.x_views[np.tile(keep, count)], np.tile(self.y_train, count)[np.tile(keep, count)]

    def describes(self, head: Any) -> bool:
        """Whether `head` is still the head fitted on these features (not trained further since)."""
        if self.fitted_valid_logits is None:
            return False
        return bool(np.allclose(head_logits(head, self.x_valid), self.fitted_valid_logits, atol=1e-4))


def train_head(head: Any, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
               fit: HeadFit) -> dict[str, float]:
    """Fit `head` (in place, on the CPU, then back on its device) on feature arrays with fastai's one-cycle."""
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
    import torch
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed

    set_seed(fit.seed, reproducible=True)
    train_set = list(zip(torch.from_numpy(x_train), torch.from_numpy(y_train).long()))
    valid_set = list(zip(torch.from_numpy(x_valid), torch.from_numpy(y_valid).long()))
    bs = max(1, min(fit.bs, len(train_set)))  # fastai drops the last partial batch: fewer rows than bs trained none
    dls = DataLoaders.from_dsets(train_set, valid_set, bs=bs, device=torch.device("cpu"), num_workers=0)
    device = next(head.parameters()).device
    head.cpu()
    loss_func = torch.nn.CrossEntropyLoss(label_smoothing=fit.label_smoothing)
    head_learn = Learner(dls, head, loss_func=loss_func, metrics=[accuracy], wd=fit.wd)
    with head_learn.no_bar(), head_learn.no_logging():
        head_learn.fit_one_cycle(fit.epochs, fit.lr)
        loss, acc = head_learn.validate() if len(valid_set) else (float("nan"), float("nan"))
    head.to(device)
    return {"valid_accuracy": float(acc), "valid_loss": float(loss)}


def head_logits(head: Any, x: np.ndarray, bs: int = 512) -> np.ndarray:
    """The head's logits for feature rows (eval mode, on the CPU)."""
    import torch

    was_training, device = head.training, next(head.parameters()).device
    head.eval().cpu()
    with torch.inference_mode():
        out = np.concatenate([head(torch.from_numpy(x[i:i + bs])).float().numpy() for i in range(0, len(x), bs)])
    head.train(was_training).to(device)
    return out


def fold_of(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per photo, stratified: each class's photos shuffled and dealt round the folds."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        out[idx] = (np.arange(len(idx)) + start) % folds
        start += len(idx)  # classes smaller than `folds` do not all land in fold 0
    return out


def out_of_fold_logits(cached: CachedFeatures, folds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every train and valid photo from a head fitted without that photo's fold (the same recipe from the
    same start on the other folds' features, mirrored copies of train photos and every other-bird photo included):
    many times the photos a validation split gives to calibrate on. Returns (logits, labels); with an other-bird
    class its logit is the last column."""
    n_train = len(cached.y_train)
    x = np.concatenate([cached.x_train[:n_train], cached.x_valid])
    y = np.concatenate([cached.y_train, cached.y_valid])
    mirrored = cached.x_train[n_train:] if cached.flip else np.empty((0, x.shape[1]), x.dtype)
    x_other, y_other = cached.other_rows()
    fold = fold_of(y, folds, cached.fit.seed)
    logits = np.zeros((len(y), _out_features(cached.untrained_head)), np.float32)
    for k in range(folds):
        held, kept = fold == k, fold != k
        kept_mirrored = kept[:len(mirrored)]  # a train photo's mirrored copy and distant views stay with it
        x_far, y_far = cached.view_rows(kept[:n_train])
        x_fit = np.concatenate([x[kept], mirrored[kept_mirrored], x_far, x_other])
        y_fit = np.concatenate([y[kept], y[:len(mirrored)][kept_mirrored], y_far, y_other])
        fresh = copy.deepcopy(cached.untrained_head)
        train_head(fresh, x_fit, y_fit, x[held], y[held], cached.fit)
        logits[held] = head_logits(fresh, x[held])
    return logits, y


def _distant_features(learn: Any, paths: list[Path], count: int, cache_dir: str | os.PathLike | None,
                      seed: int) -> np.ndarray:
    """Features of `count` distant views of each photo (view-major), rendered beside the feature cache or in a
    temporary folder."""
    import tempfile

    from .views import write_distant_views

    if cache_dir:
        return extract_features(learn, write_distant_views(paths, Path(cache_dir) / "distant-views", count, seed),
                                cache_dir=cache_dir)
    with tempfile.TemporaryDirectory(prefix="birdclf-views-") as folder:
        return extract_features(learn, write_distant_views(paths, folder, count, seed))


def _out_features(head: Any) -> int:
    return [m for m in head.modules() if hasattr(m, "out_features")][-1].out_features
