"""A tiny generated data set in the Kaggle layout, for smoke runs of the notebooks and for tests."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SYNTHETIC_CLASSES", "KAGGLE_VERSIONS", "make_synthetic_birds", "make_kaggle_quirks"]

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


# The index of each release of the Kaggle set, as the project has met them: its file and its header.
KAGGLE_VERSIONS = {
    "400": ("Bird Species.csv", ["filepaths", "labels", "data set"]),
    "450": ("birds.csv", ["class_index", "filepaths", "labels", "data set"]),
    "500": ("birds.csv", ["class id", "filepaths", "labels", "data set"]),
    "525": ("birds.csv", ["class id", "filepaths", "labels", "data set", "scientific name"]),
}
_QUIRK_SPECIES = {"PARAKETT  AUKLET": (240, 120, 20), "BLACK & YELLOW WARBLER": (230, 220, 40),
                  "SNOWY OWL": (200, 200, 200)}


def make_kaggle_quirks(root: str | os.PathLike, version: str = "525", per_split: dict[str, int] | None = None,
                       seed: int = 1) -> Path:
    """A few species in the layout and with the quirks of the real Kaggle download, from generated images:
    `PARAKETT  AUKLET` (two spaces) in train/ and test/ but `PARAKETT AUKLET` in valid/; grayscale, CMYK and
    palette images among the RGB JPEGs; an index (`birds.csv`, or `Bird Species.csv` in 400) in that release's
    columns that lists a misspelt folder (`PARAKETT  AKULET`) and one wrong label; the trained Keras model file
    at the top. The layout the pipeline must take as it comes."""
    if version not in KAGGLE_VERSIONS:
        raise ValueError(f"unknown Kaggle version {version!r}: one of {', '.join(KAGGLE_VERSIONS)}")
    root = Path(root)
    per_split = per_split or {"train": 8, "valid": 3, "test": 3}
    rng = np.random.default_rng(seed)
    rows: list[dict[str, str]] = []
    y, x = np.mgrid[0:224, 0:224]
    for class_id, (name, colour) in enumerate(_QUIRK_SPECIES.items()):
        for split, n in per_split.items():
            folder_name = " ".join(name.split()) if split == "valid" else name  # Kaggle's valid/ has one space
            folder = root / split / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 90, (224, 224, 3)).astype(np.uint8)
                cy, cx = rng.integers(60, 164, 2)
                arr[((y - cy) / 70.0) ** 2 + ((x - cx) / 70.0) ** 2 < 1] = colour
                img = Image.fromarray(arr)
                if split == "train" and i < 3:  # one of each odd mode per class, still named .jpg
                    img = [img.convert("L"), img.convert("CMYK"), img.convert("P")][i]
                path = folder / f"{i + 1}.jpg"
                img.save(path, format="PNG" if img.mode == "P" else "JPEG", quality=92)
                label = name if not (split == "test" and class_id == 2 and i == 0) else "GREAT GRAY OWL"
                rows.append({"class id": str(class_id), "class_index": str(class_id), "data set": split,
                             "filepaths": f"{split}/{folder_name}/{path.name}", "labels": label,
                             "scientific name": f"Avis quirkia {class_id}"})
    rows.append({"class id": "0", "class_index": "0", "data set": "train", "labels": "PARAKETT  AUKLET",
                 "filepaths": "train/PARAKETT  AKULET/99.jpg", "scientific name": "Aethia psittacula"})
    index, header = KAGGLE_VERSIONS[version]
    with open(root / index, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([row[column] for column in header] for row in rows)
    (root / f"EfficientNetB0-{version}-(224 X 224)- 98.97.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    return root
