"""Find images and read a data set's layout: Kaggle `train/ valid/ test/<SPECIES>/` or one folder per class."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import IMAGE_EXTENSIONS
from ..errors import DataError

__all__ = ["SPLITS", "Dataset", "list_images", "read_dataset"]

SPLITS = ("train", "valid", "test")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder`, recursively, sorted; hidden files and folders skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


@dataclass
class Dataset:
    """Image paths and labels per split; `labels` are the folder names exactly as on disk."""

    root: Path
    items: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Sorted class names over all splits."""
        return sorted({label for items in self.items.values() for _, label in items})

    def class_folders(self) -> dict[str, list[str]]:
        """The class folder names of each split, as on disk (train first)."""
        return {split: sorted({label for _, label in items}) for split, items in self.items.items()}

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class per split."""
        out: dict[str, dict[str, int]] = {}
        for split, items in self.items.items():
            for _, label in items:
                out.setdefault(label, {}).setdefault(split, 0)
                out[label][split] += 1
        return out


def read_dataset(root: str | os.PathLike) -> Dataset:
    """Read `root`: Kaggle layout when it has train/ (and valid/, test/), else one folder per class (all 'train')."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    splits = [s for s in SPLITS if (root / s).is_dir()]
    dataset = Dataset(root)
    if splits:
        for split in splits:
            dataset.items[split] = [(p, p.relative_to(root / split).parts[0]) for p in list_images(root / split)
                                    if len(p.relative_to(root / split).parts) >= 2]
    else:
        dataset.items["train"] = [(p, p.relative_to(root).parts[0]) for p in list_images(root)
                                  if len(p.relative_to(root).parts) >= 2]
    if not any(dataset.items.values()):
        raise DataError(f"no images in class folders under {root} (expected train/<CLASS>/*.jpg or <CLASS>/*.jpg)")
    return dataset
