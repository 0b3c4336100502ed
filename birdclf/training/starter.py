"""The offline starter model: ImageNet EfficientNet-Lite0 restricted to its bird classes, plus a bird-or-not signal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..constants import STARTER_ARCH, STARTER_BIRD_THRESHOLD, STARTER_FILENAME, STARTER_MODEL_NAME
from .export import ExportReport, export_onnx
from .imagenet_birds import bird_indices, bird_names

__all__ = ["STARTER_VERSION", "build_starter", "starter_module", "starter_path"]

STARTER_VERSION = "1"


def starter_path() -> Path:
    """Where the starter model is cached."""
    from ..serving.model_source import default_home

    return default_home() / STARTER_FILENAME


def starter_module(backbone: Any, indices: list[int]) -> Any:
    """Wrap a 1000-class ImageNet model: bird logits (softmax = P(species | bird)) and P(bird) over all classes."""
    import torch

    class ImageNetBirdGate(torch.nn.Module):
        """Bird-class logits and the total probability mass of the bird classes."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.register_buffer("indices", torch.tensor(indices, dtype=torch.long))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.backbone(x)
            bird_logits = logits.index_select(1, self.indices)
            bird_probability = torch.softmax(logits, dim=1).index_select(1, self.indices).sum(dim=1)
            return bird_logits, bird_probability

    return ImageNetBirdGate().eval()


def build_starter(path: str | os.PathLike | None = None, force: bool = False,
                  sample: np.ndarray | None = None) -> tuple[Path, ExportReport | None]:
    """Build the starter ONNX model (offline ImageNet weights); keeps an existing file unless `force`."""
    from .weights import create_model

    path = Path(path) if path else starter_path()
    if path.exists() and not force:
        return path, None
    backbone, source = create_model(STARTER_ARCH, pretrained=True)
    config = ModelConfig.from_timm(
        backbone.pretrained_cfg, bird_names(), STARTER_MODEL_NAME, version=STARTER_VERSION,
        bird_threshold=STARTER_BIRD_THRESHOLD,
        extra={"weights": source, "imagenet_indices": bird_indices(),
               "about": "ImageNet-1k bird classes; bird_probability = mass of bird classes among all 1000"})
    report = export_onnx(starter_module(backbone, bird_indices()), path, config, sample=sample)
    return path, report
