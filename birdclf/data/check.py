"""Check a data set: unreadable files (quarantined, never deleted), exact and near duplicates, split leakage."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BirdclfError, DataError
from ..serving.imaging import ImageLimits, load_image
from .layout import Dataset
from .paths import free_path

__all__ = ["CheckReport", "find_invalid", "quarantine", "dhash", "find_duplicates", "check_dataset"]


@dataclass
class CheckReport:
    """What `check_dataset` found; `write` saves it as CSV files."""

    invalid: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[dict] = field(default_factory=list)  # {a, b, split_a, split_b, label_a, label_b, kind, distance}
    moved: list[tuple[str, str]] = field(default_factory=list)  # (from, to)

    @property
    def leakage(self) -> list[dict]:
        """Duplicate pairs that sit in different splits."""
        return [d for d in self.duplicates if d["split_a"] != d["split_b"]]

    def summary(self) -> dict[str, int]:
        """Counts for a quick look."""
        return {"invalid": len(self.invalid), "duplicate_pairs": len(self.duplicates),
                "exact_duplicates": sum(d["kind"] == "exact" for d in self.duplicates),
                "near_duplicates": sum(d["kind"] == "near" for d in self.duplicates),
                "leakage_pairs": len(self.leakage), "quarantined": len(self.moved)}

    def write(self, folder: str | os.PathLike) -> Path:
        """Write invalid.csv, duplicates.csv, leakage.csv and quarantined.csv into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_csv(folder / "invalid.csv", ["path", "reason"], self.invalid)
        keys = ["a", "b", "split_a", "split_b", "label_a", "label_b", "kind", "distance"]
        _write_csv(folder / "duplicates.csv", keys, [[d[k] for k in keys] for d in self.duplicates])
        _write_csv(folder / "leakage.csv", keys, [[d[k] for k in keys] for d in self.leakage])
        _write_csv(folder / "quarantined.csv", ["from", "to"], self.moved)
        return folder


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def find_invalid(paths: list[Path], limits: ImageLimits | None = None) -> list[tuple[str, str]]:
    """Files that do not decode fully as images, with the reason."""
    bad = []
    for path in paths:
        try:
            load_image(path, limits)
        except BirdclfError as exc:
            bad.append((str(path), str(exc)))
    return bad


def quarantine(paths: list[str | Path], root: str | os.PathLike, folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Move files to `folder`, keeping their path relative to `root`; never overwrites, never deletes."""
    root, folder = Path(root), Path(folder)
    moved = []
    for path in map(Path, paths):
        try:
            relative = path.resolve().relative_to(root.resolve())
        except ValueError:
            relative = Path(path.name)
        target = free_path(folder / relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), target)
        moved.append((str(path), str(target)))
    return moved


def dhash(path: str | os.PathLike, size: int = 8) -> int:
    """64-bit difference hash: robust to resizing and re-encoding, for near-duplicate search."""
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_duplicates(items: list[tuple[Path, str, str]], max_distance: int = 3) -> list[dict]:
    """Exact (same bytes) and near (dHash Hamming distance <= max_distance) duplicate pairs of (path, split, label)."""
    pairs: dict[tuple[str, str], dict] = {}

    def add(i: int, j: int, kind: str, distance: int) -> None:
        (pa, sa, la), (pb, sb, lb) = sorted([items[i], items[j]], key=lambda t: str(t[0]))
        key = (str(pa), str(pb))
        if key not in pairs or pairs[key]["kind"] == "near" and kind == "exact":
            pairs[key] = {"a": str(pa), "b": str(pb), "split_a": sa, "split_b": sb, "label_a": la, "label_b": lb,
                          "kind": kind, "distance": distance}

    by_digest: dict[str, list[int]] = defaultdict(list)
    hashes: list[int | None] = []
    for index, (path, _, _) in enumerate(items):
        by_digest[_file_digest(path)].append(index)
        try:
            hashes.append(dhash(path))
        except Exception:
            hashes.append(None)  # unreadable: find_invalid reports it
    for group in by_digest.values():
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                add(group[a], group[b], "exact", 0)
    # Pigeonhole: two 64-bit hashes within distance d share at least one of d + 1 blocks exactly.
    if not 0 <= max_distance < 64:
        raise DataError(f"max_distance must be from 0 to 63, got {max_distance}")
    edges = [round(64 * k / (max_distance + 1)) for k in range(max_distance + 2)]
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, h in enumerate(hashes):
        if h is not None:
            for block, (low, high) in enumerate(zip(edges, edges[1:])):
                buckets[(block, (h >> low) & ((1 << (high - low)) - 1))].append(index)
    checked: set[tuple[int, int]] = set()
    for group in buckets.values():
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                i, j = group[a], group[b]
                if (i, j) in checked:
                    continue
                checked.add((i, j))
                distance = bin(hashes[i] ^ hashes[j]).count("1")  # type: ignore[operator]
                if distance <= max_distance:
                    add(i, j, "exact" if distance == 0 and _file_digest(items[i][0]) == _file_digest(items[j][0])
                        else "near", distance)
    return sorted(pairs.values(), key=lambda d: (d["kind"] != "exact", d["a"], d["b"]))


def check_dataset(dataset: Dataset, quarantine_dir: str | os.PathLike | None = None,
                  max_distance: int = 3) -> CheckReport:
    """Find invalid files (moved to `quarantine_dir` if given), then duplicates and leakage among the rest."""
    every = [(path, split, label) for split, items in dataset.items.items() for path, label in items]
    report = CheckReport(invalid=find_invalid([p for p, _, _ in every]))
    bad = {p for p, _ in report.invalid}
    if quarantine_dir is not None and bad:
        report.moved = quarantine(sorted(bad), dataset.root, quarantine_dir)
    report.duplicates = find_duplicates([t for t in every if str(t[0]) not in bad], max_distance)
    return report
