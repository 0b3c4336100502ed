"""The defences against hostile input, each behind one call; the main path calls them, how each bound is kept
lives here.

- structure: walk a file's structure before Pillow parses it (parse bombs; decoders' hidden buffers)
- memory: what a decode will hold, and one budget over it shared by concurrent decodes
- guard: the ASGI guard around every request (body cap, upload budget, deadline, a JSON answer always)
- admission: work places and bytes held by a request until its work really ends
- protocol: uvicorn's h11 protocol with header deadlines, a connection cap and lingering close
"""

from __future__ import annotations

import importlib
from typing import Any

from .memory import DecodeBudget, decode_budget, decode_cost, return_freed_memory_to_os
from .structure import FileFacts, precheck

__all__ = ["precheck", "FileFacts", "DecodeBudget", "decode_budget", "decode_cost", "return_freed_memory_to_os",
           "Admission", "Pass", "BodyBudget", "RequestGuard", "GuardedH11Protocol"]

# the ASGI defences need the [serve] extra: imported on first use, so image decoding (training) needs only Pillow
_LAZY = {"Admission": ".admission", "Pass": ".admission", "BodyBudget": ".guard", "RequestGuard": ".guard",
         "GuardedH11Protocol": ".protocol"}


def __getattr__(name: str) -> Any:
    """Import an ASGI defence on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
