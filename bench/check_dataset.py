"""`check_dataset` on a Kaggle-sized folder: 90,000 generated 224x224 JPEGs (525 classes, the real set's file size
and shape), every file read once: wall time, files/s, and peak memory.

Run: GLIBC_TUNABLES=... .venv/bin/python -m bench.check_dataset [--files 90000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import machine, print_table, write_json

_CLASSES = 525


def _photo_bytes(seed: int) -> bytes:
    """A 224x224 JPEG of the Kaggle set's typical size (~20 KB): smooth colour fields and noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (7, 7, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((224, 224), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (224, 224, 3))
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_class(args: tuple[Path, int, int]) -> int:
    root, class_id, per_class = args
    variants = [_photo_bytes(class_id * 1000 + i) for i in range(8)]  # distinct files, few encodes
    written = 0
    for i in range(per_class):
        split = "train" if i < per_class - 10 else ("valid" if i < per_class - 5 else "test")
        folder = root / split / f"SPECIES {class_id:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = bytearray(variants[i % len(variants)])
        data[-3] = i % 251  # a different byte near the end: no two files identical
        (folder / f"{i + 1:03d}.jpg").write_bytes(bytes(data))
        written += 1
    return written


def make_tree(root: Path, files: int) -> int:
    """A Kaggle-layout tree of `files` JPEGs over 525 classes."""
    per_class = max(12, files // _CLASSES)
    with ProcessPoolExecutor() as pool:
        return sum(pool.map(_write_class, [(root, c, per_class) for c in range(_CLASSES)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=90_000)
    parser.add_argument("--keep", help="make (or reuse) the tree here instead of a temporary folder")
    args = parser.parse_args()
    from birdclf.data.check import check_dataset
    from birdclf.data.layout import read_dataset

    root = Path(args.keep or tempfile.mkdtemp(prefix="birdclf-90k-"))
    try:
        t = time.perf_counter()
        files = make_tree(root, args.files) if not (root / "train").is_dir() else None
        made_s = time.perf_counter() - t
        t = time.perf_counter()
        dataset = read_dataset(root)
        listed_s = time.perf_counter() - t
        t = time.perf_counter()
        report = check_dataset(dataset, progress=True)
        check_s = time.perf_counter() - t
        row = {"files": report.files, "made_s": made_s if files else None, "list_s": listed_s, "check_s": check_s,
               "files_per_s": report.files / check_s, "invalid": len(report.invalid),
               "main_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table([row], list(row))
    print(f"wrote {write_json('check_dataset', {'machine': machine(), **row})}")


if __name__ == "__main__":
    main()
