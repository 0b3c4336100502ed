"""Species names: tidy display labels and file-safe slugs, always keeping the original folder text."""

from __future__ import annotations

import re

__all__ = ["normalize_label", "label_slug", "label_map"]


def normalize_label(name: str) -> str:
    """Display label: whitespace collapsed and trimmed ('BLACK  & WHITE' -> 'BLACK & WHITE'); text otherwise kept."""
    return " ".join(str(name).split())


def label_slug(name: str) -> str:
    """File- and URL-safe id: '&' -> 'AND', other non-alphanumerics -> '_' ('BLACK & WHITE' -> 'BLACK_AND_WHITE')."""
    text = normalize_label(name).replace("&", " AND ")
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")


def label_map(originals: list[str]) -> dict[str, str]:
    """Original folder name -> display label; refuses two originals that collapse to one label."""
    mapping: dict[str, str] = {}
    seen: dict[str, str] = {}
    for original in originals:
        label = normalize_label(original)
        if label in seen and seen[label] != original:
            from ..errors import DataError

            raise DataError(f"class folders {seen[label]!r} and {original!r} are the same species after "
                            "normalising spaces: merge them first")
        seen[label] = original
        mapping[original] = label
    return mapping
