"""The Kaggle set's own index, `birds.csv` (`class id`/`class_id`, `filepaths`, `labels`, `data set`, and
`scientific name` in later releases; `Bird Species.csv` with three columns in older ones), read and compared with
the folders. The folders are what birdclf trains on; the index only tells where the two disagree."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .labels import label_key
from .layout import Dataset

__all__ = ["IndexRow", "IndexReport", "find_index", "read_index", "compare_index"]

_PATH, _LABEL = "filepaths", "labels"
_SPLIT = ("data set", "dataset")
_CLASS_ID = ("class id", "class index")
_SCIENTIFIC = "scientific name"


@dataclass(frozen=True)
class IndexRow:
    """One line of the index: the file (relative to the data root, '/'-separated), its label and split."""

    path: str
    label: str
    split: str = ""
    class_id: str = ""
    scientific_name: str = ""


@dataclass
class IndexReport:
    """Where the index and the folders disagree (the folders win)."""

    index: str = ""
    rows: int = 0
    missing: list[str] = field(default_factory=list)  # listed, not on disk (e.g. 'PARAKETT  AKULET' in birds.csv)
    unlisted: list[str] = field(default_factory=list)  # on disk, not listed
    label_mismatch: list[tuple[str, str, str]] = field(default_factory=list)  # (path, index label, folder)
    split_mismatch: list[tuple[str, str, str]] = field(default_factory=list)  # (path, index split, folder's split)

    def summary(self) -> dict[str, int | str]:
        """Counts, for a quick look."""
        return {"index": self.index, "rows": self.rows, "missing_files": len(self.missing),
                "unlisted_files": len(self.unlisted), "label_mismatches": len(self.label_mismatch),
                "split_mismatches": len(self.split_mismatch)}

    def disagreements(self) -> list[tuple[str, str, str, str]]:
        """(kind, path, index says, folders say) rows for a CSV report."""
        return ([("missing", p, "listed", "no file") for p in self.missing]
                + [("unlisted", p, "not listed", "file") for p in self.unlisted]
                + [("label", p, a, b) for p, a, b in self.label_mismatch]
                + [("split", p, a, b) for p, a, b in self.split_mismatch])


def _columns(header: list[str]) -> dict[str, int]:
    return {" ".join(name.replace("_", " ").lower().split()): i for i, name in enumerate(header)}


def find_index(root: str | os.PathLike) -> Path | None:
    """The index CSV in a data root (a .csv whose header has `filepaths` and `labels`), or None."""
    for path in sorted(Path(root).glob("*.csv")):
        try:
            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                header = next(csv.reader(f), [])
        except OSError:
            continue
        if {_PATH, _LABEL} <= set(_columns(header)):
            return path
    return None


def read_index(path: str | os.PathLike) -> list[IndexRow]:
    """The rows of an index CSV; a file without `filepaths` and `labels` columns is refused."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        columns = _columns(next(reader, []))
        if not {_PATH, _LABEL} <= set(columns):
            raise DataError(f"{path} is not an image index: it needs 'filepaths' and 'labels' columns")

        def pick(row: list[str], names: tuple[str, ...] | str) -> str:
            for name in (names,) if isinstance(names, str) else names:
                if name in columns and columns[name] < len(row):
                    return row[columns[name]]
            return ""

        return [IndexRow(pick(row, _PATH).replace("\\", "/").strip("/"), pick(row, _LABEL), pick(row, _SPLIT).strip(),
                         pick(row, _CLASS_ID), pick(row, _SCIENTIFIC)) for row in reader if row]


def compare_index(dataset: Dataset, index: str | os.PathLike | None = None) -> IndexReport | None:
    """Compare the data root's index (found if not given) with the folders; None when there is no index."""
    index = Path(index) if index else find_index(dataset.root)
    if index is None:
        return None
    rows = read_index(index)
    on_disk = {path.relative_to(dataset.root).as_posix(): (split, label)
               for split, items in dataset.items.items() for path, label in items}
    report = IndexReport(index=index.name, rows=len(rows))
    listed = set()
    for row in rows:
        listed.add(row.path)
        if row.path not in on_disk:
            report.missing.append(row.path)
            continue
        split, folder = on_disk[row.path]
        if label_key(row.label) != label_key(folder):
            report.label_mismatch.append((row.path, row.label, folder))
        if row.split and row.split.lower() != split and len(dataset.items) > 1:
            report.split_mismatch.append((row.path, row.split, split))
    report.unlisted = sorted(set(on_disk) - listed)
    return report
