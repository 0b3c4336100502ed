"""birdclf: bird species classification, from fastai training to ONNX serving on CPU."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "Predictor", "Prediction", "ModelConfig", "BirdclfError"]

_LAZY = {
    "Predictor": "birdclf.serving.predictor",
    "Prediction": "birdclf.serving.predictor",
    "ModelConfig": "birdclf.config",
    "BirdclfError": "birdclf.errors",
}


def __getattr__(name: str) -> Any:
    """Import heavy pieces only when used (serving never pulls in torch or fastai)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'birdclf' has no attribute {name!r}")
