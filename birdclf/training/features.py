"""The fast CPU path: run the frozen body once, cache its pooled features, train the fastai head on the cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["feature_key", "extract_features", "fit_head_on_features"]


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
                         label_smoothing: float = 0.1) -> dict[str, Any]:
    """Train the Learner's own head (after pooling) with fastai's one-cycle on cached features; the head is
    trained in place, so the Learner then predicts, exports and fine-tunes as usual."""
    import torch
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed

    train_ds, valid_ds = learn.dls.train_ds, learn.dls.valid_ds
    y_train = np.array([int(train_ds.tls[1][i]) for i in range(len(train_ds))])  # labels only, no image decode
    y_valid = np.array([int(valid_ds.tls[1][i]) for i in range(len(valid_ds))])
    train_paths, valid_paths = list(train_ds.items), list(valid_ds.items)
    x_train = extract_features(learn, train_paths, flip=flip, cache_dir=cache_dir)
    x_valid = extract_features(learn, valid_paths, flip=False, cache_dir=cache_dir)
    if flip:
        y_train = np.concatenate([y_train, y_train])
    set_seed(seed, reproducible=True)
    train_set = list(zip(torch.from_numpy(x_train), torch.from_numpy(y_train).long()))
    valid_set = list(zip(torch.from_numpy(x_valid), torch.from_numpy(y_valid).long()))
    dls = DataLoaders.from_dsets(train_set, valid_set, bs=bs, device=torch.device("cpu"))
    head = learn.model[1][2:]
    device = next(head.parameters()).device
    head.cpu()
    loss_func = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    head_learn = Learner(dls, head, loss_func=loss_func, metrics=[accuracy], wd=wd)
    with head_learn.no_bar(), head_learn.no_logging():
        head_learn.fit_one_cycle(epochs, lr)
        loss, acc = head_learn.validate()
    head.to(device)
    return {"epochs": epochs, "lr": lr, "bs": bs, "wd": wd, "label_smoothing": label_smoothing,
            "train_features": int(len(x_train)), "valid_accuracy": float(acc),
            "valid_loss": float(loss), "feature_dim": int(x_train.shape[1])}
