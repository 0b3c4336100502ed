"""File-name helpers for moving and linking user files without ever overwriting one."""

from __future__ import annotations

from pathlib import Path

__all__ = ["free_path"]


def free_path(target: Path) -> Path:
    """`target`, or `name.1.ext`, `name.2.ext`, ... : the first that does not exist yet (dangling links count)."""
    candidate, n = target, 1
    while candidate.exists() or candidate.is_symlink():
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    return candidate
