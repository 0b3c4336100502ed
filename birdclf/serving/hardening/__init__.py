"""The defences against hostile input, each behind one call: admission (work places and bytes held per request).

The main path calls them; how each bound is kept lives here.
"""

from __future__ import annotations

from .admission import Admission, Pass

__all__ = ["Admission", "Pass"]
