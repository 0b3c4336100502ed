"""Species names: tidy display labels and file-safe slugs, always keeping the original folder text."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

from ..errors import DataError

__all__ = ["normalize_label", "label_key", "label_slug", "label_map"]

logger = logging.getLogger(__name__)
_reported: set[tuple[str, ...]] = set()  # merges already logged in this process (splits are rebuilt often)


def normalize_label(name: str) -> str:
    """Display label: whitespace collapsed and trimmed ('BLACK  & WHITE' -> 'BLACK & WHITE'); text otherwise kept."""
    return " ".join(str(name).split())


def label_key(name: str) -> str:
    """What makes two folder names one species: the same text once whitespace and case are ignored."""
    return normalize_label(name).casefold()


def label_slug(name: str) -> str:
    """File- and URL-safe id: '&' -> 'AND', other non-alphanumerics -> '_' ('BLACK & WHITE' -> 'BLACK_AND_WHITE')."""
    text = normalize_label(name).replace("&", " AND ")
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")


def label_map(originals: Sequence[str] | Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Original folder name -> display label. `originals` is one list of class folders, or the class folders of
    each split (`{"train": [...], "valid": [...]}`): names that differ only in whitespace or case across splits are
    one species (BIRDS 525 has 'PARAKETT  AUKLET' in train/ and test/ but 'PARAKETT AUKLET' in valid/), merged and
    logged; two such folders within one split are refused (which one is right is the user's call)."""
    by_split = {"": list(originals)} if not isinstance(originals, Mapping) else dict(originals)
    spellings: dict[str, list[str]] = {}  # key -> originals, in split order (train first)
    for split, names in by_split.items():
        within: dict[str, str] = {}
        for name in names:
            key = label_key(name)
            if key in within and within[key] != name:
                where = f" in {split}/" if split else ""
                raise DataError(f"class folders {within[key]!r} and {name!r}{where} are the same species after "
                                "normalising spaces and case: merge them first")
            within[key] = name
            if name not in spellings.setdefault(key, []):
                spellings[key].append(name)
    mapping = {}
    for names in spellings.values():
        label = normalize_label(names[0])  # the first split's spelling (train's), tidied
        mapping.update(dict.fromkeys(names, label))
        if len(names) > 1 and tuple(names) not in _reported:
            _reported.add(tuple(names))
            logger.warning("merged class folders %s across splits as one species, %r",
                           " and ".join(repr(n) for n in names), label)
    return mapping
