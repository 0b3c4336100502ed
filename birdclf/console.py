"""What the commands print: the one JSON printer every `birdclf` command uses (no other birdclf imports, so the
command-line modules of the package and of its training extra can both use it)."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

__all__ = ["print_json", "echo", "OUT"]

OUT: TextIO | None = None  # where results go while a command sends everything else printed to stderr


def print_json(data: Any) -> None:
    """The one JSON printer of every command."""
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str), file=OUT or sys.stdout)


def echo(*values: Any) -> None:
    """print() for a command's result (stdout, even while the command sends other output to stderr)."""
    print(*values, file=OUT or sys.stdout)
