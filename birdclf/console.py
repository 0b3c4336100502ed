"""What the commands print: the one JSON printer every `birdclf` command uses (no other birdclf imports, so the
command-line modules of the package and of its training extra can both use it)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["print_json"]


def print_json(data: Any) -> None:
    """The one JSON printer of every command."""
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
