"""Check a data set: unreadable files (quarantined, never deleted), exact and near duplicates, split leakage, and
where the set's own index (`birds.csv`) disagrees with the folders. Each file is read once: its bytes give the
digest and are decoded once for both the validity check and the near-duplicate hash, on a few threads (Pillow
decodes without the GIL), with a progress bar."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BirdclfError, DataError
from ..serving.imaging import ImageLimits, load_image
from .index import IndexReport, compare_index
from .labels import label_map
from .layout import Dataset
from .paths import free_path

__all__ = ["CheckReport", "FileScan", "scan_files", "find_invalid", "quarantine", "dhash", "find_duplicates",
           "check_dataset"]


@dataclass
class CheckReport:
    """What `check_dataset` found; `write` saves it as CSV files."""

    invalid: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[dict] = field(default_factory=list)  # {a, b, split_a, split_b, label_a, label_b, kind, distance}
    moved: list[tuple[str, str]] = field(default_factory=list)  # (from, to)
    merged: dict[str, list[str]] = field(default_factory=dict)  # display label -> its folder spellings across splits
    index: IndexReport | None = None  # birds.csv against the folders, when the set has an index
    files: int = 0

    @property
    def leakage(self) -> list[dict]:
        """Duplicate pairs that sit in different splits."""
        return [d for d in self.duplicates if d["split_a"] != d["split_b"]]

    def summary(self) -> dict:
        """Counts for a quick look."""
        out: dict = {"files": self.files, "invalid": len(self.invalid), "duplicate_pairs": len(self.duplicates),
                     "exact_duplicates": sum(d["kind"] == "exact" for d in self.duplicates),
                     "near_duplicates": sum(d["kind"] == "near" for d in self.duplicates),
                     "leakage_pairs": len(self.leakage), "quarantined": len(self.moved),
                     "merged_labels": self.merged}
        if self.index is not None:
            out["index"] = self.index.summary()
        return out

    def write(self, folder: str | os.PathLike) -> Path:
        """Write invalid.csv, duplicates.csv, leakage.csv, quarantined.csv (and index.csv) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_csv(folder / "invalid.csv", ["path", "reason"], self.invalid)
        keys = ["a", "b", "split_a", "split_b", "label_a", "label_b", "kind", "distance"]
        _write_csv(folder / "duplicates.csv", keys, [[d[k] for k in keys] for d in self.duplicates])
        _write_csv(folder / "leakage.csv", keys, [[d[k] for k in keys] for d in self.leakage])
        _write_csv(folder / "quarantined.csv", ["from", "to"], self.moved)
        if self.index is not None:
            _write_csv(folder / "index.csv", ["kind", "path", "index", "folders"], self.index.disagreements())
        return folder


@dataclass
class FileScan:
    """One file, read once: its SHA-256, its dHash (None if it does not decode) and why it does not."""

    path: Path
    digest: str
    hash: int | None
    error: str | None = None


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _scan(path: Path, limits: ImageLimits | None) -> FileScan:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return FileScan(path, "", None, f"cannot read: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        return FileScan(path, digest, dhash(load_image(data, limits)))
    except BirdclfError as exc:
        return FileScan(path, digest, None, str(exc))


def scan_files(paths: list[Path], limits: ImageLimits | None = None, workers: int | None = None,
               progress: bool = True) -> list[FileScan]:
    """Read, hash and fully decode each file once, on `workers` threads (default: the CPUs, at most 8)."""
    from tqdm.auto import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), desc="checking images", unit="img",
                                                   disable=not progress, mininterval=1.0) as bar:
        scans = []
        for scan in pool.map(lambda p: _scan(Path(p), limits), paths, chunksize=64):
            scans.append(scan)
            bar.update()
    return scans


def find_invalid(paths: list[Path], limits: ImageLimits | None = None) -> list[tuple[str, str]]:
    """Files that do not decode fully as images, with the reason."""
    return [(str(s.path), s.error) for s in scan_files(paths, limits, progress=False) if s.error]


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


def dhash(image: str | os.PathLike | Image.Image, size: int = 8) -> int:
    """64-bit difference hash of a file or a decoded image: robust to resizing and re-encoding."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as img:
            return dhash(img.convert("RGB"), size)
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_duplicates(items: list[tuple[Path, str, str]], max_distance: int = 3,
                    scans: list[FileScan] | None = None) -> list[dict]:
    """Exact (same bytes) and near (dHash Hamming distance <= max_distance) duplicate pairs of (path, split, label);
    `scans` (one per item, from `scan_files`) saves reading the files again."""
    if not 0 <= max_distance < 64:
        raise DataError(f"max_distance must be from 0 to 63, got {max_distance}")
    if scans is None:
        scans = []
        for path, _, _ in items:
            try:
                scans.append(FileScan(Path(path), _file_digest(path), dhash(path)))
            except Exception:
                scans.append(FileScan(Path(path), _file_digest(path), None))  # unreadable: find_invalid says so
    pairs: dict[tuple[str, str], dict] = {}

    def add(i: int, j: int, kind: str, distance: int) -> None:
        (pa, sa, la), (pb, sb, lb) = sorted([items[i], items[j]], key=lambda t: str(t[0]))
        key = (str(pa), str(pb))
        if key not in pairs or pairs[key]["kind"] == "near" and kind == "exact":
            pairs[key] = {"a": str(pa), "b": str(pb), "split_a": sa, "split_b": sb, "label_a": la, "label_b": lb,
                          "kind": kind, "distance": distance}

    by_digest: dict[str, list[int]] = defaultdict(list)
    for index, scan in enumerate(scans):
        by_digest[scan.digest].append(index)
    for group in by_digest.values():
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                add(group[a], group[b], "exact", 0)
    for i, j, distance in _near_pairs([s.hash for s in scans], max_distance):
        add(i, j, "exact" if scans[i].digest == scans[j].digest else "near", distance)
    return sorted(pairs.values(), key=lambda d: (d["kind"] != "exact", d["a"], d["b"]))


def _near_pairs(hashes: list[int | None], max_distance: int) -> list[tuple[int, int, int]]:
    """Index pairs whose hashes are within `max_distance` bits. Pigeonhole: two 64-bit hashes within distance d
    share at least one of d + 1 blocks exactly, so only hashes sharing a block are compared."""
    edges = [round(64 * k / (max_distance + 1)) for k in range(max_distance + 2)]
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, h in enumerate(hashes):
        if h is not None:
            for block, (low, high) in enumerate(zip(edges, edges[1:])):
                buckets[(block, (h >> low) & ((1 << (high - low)) - 1))].append(index)
    checked: set[tuple[int, int]] = set()
    found = []
    for group in buckets.values():
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                i, j = group[a], group[b]
                if (i, j) in checked:
                    continue
                checked.add((i, j))
                distance = bin(hashes[i] ^ hashes[j]).count("1")  # type: ignore[operator]
                if distance <= max_distance:
                    found.append((i, j, distance))
    return found


def check_dataset(dataset: Dataset, quarantine_dir: str | os.PathLike | None = None, max_distance: int = 3,
                  progress: bool = True, workers: int | None = None) -> CheckReport:
    """Read every file once: invalid files (moved to `quarantine_dir` if given), then duplicates and leakage among
    the rest; also the labels merged across splits and where `birds.csv` disagrees with the folders."""
    every = [(path, split, label) for split, items in dataset.items.items() for path, label in items]
    scans = scan_files([p for p, _, _ in every], workers=workers, progress=progress)
    report = CheckReport(invalid=[(str(s.path), s.error) for s in scans if s.error], files=len(every))
    merged: dict[str, list[str]] = defaultdict(list)
    for original, label in label_map(dataset.class_folders()).items():
        merged[label].append(original)
    report.merged = {label: names for label, names in merged.items() if len(names) > 1}
    report.index = compare_index(dataset)
    if quarantine_dir is not None and report.invalid:
        report.moved = quarantine(sorted(p for p, _ in report.invalid), dataset.root, quarantine_dir)
    kept = [i for i, s in enumerate(scans) if not s.error]
    report.duplicates = find_duplicates([every[i] for i in kept], max_distance, [scans[i] for i in kept])
    return report
