"""Choose the splits: the given valid/test, or a seeded stratified re-split; mini subsets; class and size stats."""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .labels import label_map
from .layout import Dataset
from .paths import free_path

__all__ = ["Splits", "make_splits", "mini_subset", "materialize", "dataset_stats"]

Splits = dict[str, list[tuple[Path, str]]]  # split -> [(path, display label)]


def _relabel(dataset: Dataset) -> Splits:
    mapping = label_map(dataset.class_folders())  # folders that differ only in spaces/case across splits merge
    return {split: [(p, mapping[label]) for p, label in items] for split, items in dataset.items.items()}


def make_splits(dataset: Dataset, strategy: str = "given", valid_pct: float = 0.1, seed: int = 42) -> Splits:
    """'given': keep train/valid/test as on disk (valid made from train if absent); 'random': a seeded
    stratified re-split of train+valid (Kaggle's valid/test are hand-picked best images), test kept apart."""
    if strategy not in ("given", "random"):
        raise DataError(f"split strategy must be 'given' or 'random', not {strategy!r}")
    if not 0 < valid_pct < 1:
        raise DataError(f"valid_pct must be between 0 and 1, got {valid_pct}")
    items = _relabel(dataset)
    if strategy == "given" and items.get("valid"):
        return {k: list(v) for k, v in items.items()}
    pool = items.get("train", []) + (items.get("valid", []) if strategy == "random" else [])
    by_class: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    for item in sorted(pool, key=lambda t: str(t[0])):
        by_class[item[1]].append(item)
    rng = random.Random(seed)
    train, valid = [], []
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        n_valid = max(1, round(len(group) * valid_pct)) if len(group) > 1 else 0
        valid += group[:n_valid]
        train += group[n_valid:]
    out = {"train": train, "valid": valid}
    if items.get("test"):
        out["test"] = list(items["test"])
    return out


def mini_subset(splits: Splits, per_class: int, seed: int = 42, max_classes: int | None = None,
                valid_per_class: int | None = None) -> Splits:
    """A seeded subset: `per_class` train images per class (and fewer valid/test), optionally the first N classes."""
    if per_class < 1:
        raise DataError("per_class must be at least 1")
    classes = sorted({label for items in splits.values() for _, label in items})
    if max_classes:
        rng = random.Random(seed)
        classes = sorted(rng.sample(classes, min(max_classes, len(classes))))
    keep = set(classes)
    out: Splits = {}
    for split, items in splits.items():
        n = per_class if split == "train" else (valid_per_class or max(1, per_class // 4))
        by_class: dict[str, list[tuple[Path, str]]] = defaultdict(list)
        for item in sorted(items, key=lambda t: str(t[0])):
            if item[1] in keep:
                by_class[item[1]].append(item)
        rng = random.Random(f"{seed}-{split}")
        out[split] = [x for label in sorted(by_class)
                      for x in rng.sample(by_class[label], min(n, len(by_class[label])))]
    return out


def materialize(splits: Splits, dest: str | os.PathLike, copy: bool = False) -> Path:
    """Write splits as dest/<split>/<label>/<file> (symlinks by default, copies where the file system has none);
    refuses to touch an existing folder."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} exists and is not empty: choose a new folder")
    for split, items in splits.items():
        for path, label in items:
            target = free_path(dest / split / label / path.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(path, target)
            else:
                try:
                    target.symlink_to(path.resolve())
                except OSError:  # no symlinks here (Google Drive, some Windows set-ups): copy instead
                    shutil.copy2(path, target)
    return dest


def dataset_stats(splits: Splits, sample: int = 500, seed: int = 0) -> dict:
    """Images per class per split, class balance, and image size statistics from a sample (header reads only)."""
    counts = {split: Counter(label for _, label in items) for split, items in splits.items()}
    every = [p for items in splits.values() for p, _ in items]
    rng = random.Random(seed)
    sizes, modes = [], Counter()
    for path in rng.sample(every, min(sample, len(every))):
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
                modes[img.mode] += 1
        except Exception:
            modes["unreadable"] += 1
    arr = np.array(sizes) if sizes else np.zeros((0, 2))
    per_class = counts.get("train", Counter())
    return {
        "num_classes": len({label for c in counts.values() for label in c}),
        "images": {split: sum(c.values()) for split, c in counts.items()},
        "per_class": {split: dict(sorted(c.items())) for split, c in counts.items()},
        "train_per_class": {"min": min(per_class.values(), default=0), "max": max(per_class.values(), default=0),
                            "mean": float(np.mean(list(per_class.values()))) if per_class else 0.0},
        "image_size": {"sampled": len(sizes),
                       "width": _describe(arr[:, 0]), "height": _describe(arr[:, 1]),
                       "most_common": [f"{w}x{h}" for (w, h), _ in Counter(map(tuple, sizes)).most_common(3)]},
        "modes": dict(modes),
    }


def _describe(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}
