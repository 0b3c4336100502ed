"""Apply fastai ImageClassifierCleaner decisions to the files safely: deletions are quarantined, relabels moved."""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data.labels import normalize_label
from ..data.paths import free_path
from ..errors import DataError

__all__ = ["apply_decisions", "apply_cleaner"]


def _class_folder(path: Path, label: str) -> Path:
    """The sibling class folder for `label`, matching display labels to on-disk names (double spaces kept)."""
    split_dir = path.parent.parent
    for folder in split_dir.iterdir():
        if folder.is_dir() and normalize_label(folder.name) == normalize_label(label):
            return folder
    return split_dir / label


def apply_decisions(paths: list[str | Path], deletes: Iterable[int], changes: Iterable[tuple[int, str]],
                    quarantine_dir: str | os.PathLike, log: str | os.PathLike | None = None) -> list[dict]:
    """Move 'delete' files into `quarantine_dir` and 'change' files into their new class folder; log each move."""
    quarantine_dir = Path(quarantine_dir)
    deletes, changes = list(deletes), list(changes)
    both = set(deletes) & {i for i, _ in changes}
    if both:
        raise DataError(f"files marked both delete and relabel: {sorted(both)}")
    actions = []
    for index in deletes:
        src = Path(paths[index])
        dst = free_path(quarantine_dir / src.parent.name / src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), dst)
        actions.append({"action": "quarantine", "from": str(src), "to": str(dst)})
    for index, label in changes:
        src = Path(paths[index])
        folder = _class_folder(src, label)
        if folder.resolve() == src.parent.resolve():
            continue  # already in that class: nothing to move
        dst = free_path(folder / src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), dst)
        actions.append({"action": "relabel", "from": str(src), "to": str(dst), "label": label})
    if log is not None and actions:
        log = Path(log)
        new = not log.exists()
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["time", "action", "from", "to", "label"])
            if new:
                writer.writeheader()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            writer.writerows({"time": stamp, "label": "", **a} for a in actions)
    return actions


def apply_cleaner(cleaner: Any, quarantine_dir: str | os.PathLike, log: str | os.PathLike | None = None) -> list[dict]:
    """Apply a fastai `ImageClassifierCleaner`'s current page of decisions (call after each page you review)."""
    return apply_decisions(list(cleaner.fns), cleaner.delete(), cleaner.change(), quarantine_dir, log)
