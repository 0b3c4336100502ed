"""Serving: image decoding, the Predictor, the ASGI API, URL fetching and Azure packaging.

Installs with the `serve` extra alone and imports no torch, fastai, timm or onnx (a test enforces it).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Predictor", "Prediction", "create_app"]

_LAZY = {"Predictor": ".predictor", "Prediction": ".predictor", "create_app": ".service"}


def __getattr__(name: str) -> Any:
    """Import on first use, so `birdclf.serving.imaging` alone does not pull in FastAPI."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
