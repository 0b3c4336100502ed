"""A tiny generated data set in the Kaggle layout, for smoke runs of the notebooks and for tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SYNTHETIC_CLASSES", "make_synthetic_birds"]

# Names keep the Kaggle set's quirks: a double space and an '&'.
SYNTHETIC_CLASSES = {"RED  CARDINAL": (220, 30, 30), "GREEN & BLUE JAY": (30, 200, 60), "BLUE BUNTING": (30, 60, 220)}


def make_synthetic_birds(root: str | os.PathLike, per_split: dict[str, int] | None = None,
                         size: tuple[int, int] = (72, 60), seed: int = 0) -> Path:
    """train/valid/test/<SPECIES>/N.jpg plus birds.csv; each class is a coloured blob on noise (learnable)."""
    root = Path(root)
    per_split = per_split or {"train": 10, "valid": 4, "test": 4}
    rng = np.random.default_rng(seed)
    rows = []
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    for class_id, (name, colour) in enumerate(SYNTHETIC_CLASSES.items()):
        for split, n in per_split.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
                cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
                mask = ((y - cy) / (height / 3)) ** 2 + ((x - cx) / (width / 3)) ** 2 < 1
                arr[mask] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
                path = folder / f"{i + 1}.jpg"
                Image.fromarray(arr).save(path, quality=92)
                rows.append([class_id, f"{split}/{name}/{path.name}", name, split, f"Avis synthetica {class_id}"])
    with open(root / "birds.csv", "w") as f:
        f.write("class_id,filepaths,labels,data set,scientific name\n")
        f.writelines(",".join(map(str, r)) + "\n" for r in rows)
    return root
