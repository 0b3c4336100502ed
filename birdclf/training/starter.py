"""The offline starter model: ImageNet EfficientNet-Lite0 restricted to its bird classes, plus a bird-or-not signal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..constants import (
    STARTER_ARCH,
    STARTER_BIRD_THRESHOLD,
    STARTER_CALIBRATION_NOTE,
    STARTER_FILENAME,
    STARTER_MODEL_NAME,
    STARTER_SPECIES_THRESHOLD,
    STARTER_TEMPERATURE,
)
from .card import INTENDED_USE, LIMITS, write_card
from .export import ExportReport, export_onnx, read_model_config
from .imagenet_birds import GROUP_LABELS, bird_indices, bird_names

__all__ = ["STARTER_VERSION", "build_starter", "starter_card", "starter_module", "starter_path"]

STARTER_VERSION = "4"  # 2: "Mallard" label, calibrated verdicts, model card; 3: gate figures of bench.gate; 4: bird map


def starter_path() -> Path:
    """Where the starter model is cached."""
    from ..serving.model_source import default_home

    return default_home() / STARTER_FILENAME


def starter_module(backbone: Any, indices: list[int]) -> Any:
    """Wrap a 1000-class ImageNet model: bird logits (softmax = P(species | bird)), P(bird) over all classes and the
    bird map (P(bird) at each place of the last features)."""
    import torch

    from .gate import bird_map

    class ImageNetBirdGate(torch.nn.Module):
        """Bird-class logits and the total probability mass of the bird classes."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.register_buffer("indices", torch.tensor(indices, dtype=torch.long))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            features = self.backbone.forward_features(x)
            where = bird_map(self.backbone.get_classifier(), self.indices, features)
            logits = self.backbone.forward_head(features)
            bird_logits = logits.index_select(1, self.indices)
            bird_probability = torch.softmax(logits, dim=1).index_select(1, self.indices).sum(dim=1)
            return bird_logits, bird_probability, where

    return ImageNetBirdGate().eval()


def build_starter(path: str | os.PathLike | None = None, force: bool = False,
                  sample: np.ndarray | None = None) -> tuple[Path, ExportReport | None]:
    """Build the starter ONNX model (offline ImageNet weights); keeps an existing file unless `force`."""
    from .weights import create_model

    path = Path(path) if path else starter_path()
    if path.exists() and not force and _version_of(path) == STARTER_VERSION:
        return path, None
    backbone, source = create_model(STARTER_ARCH, pretrained=True)
    card = starter_card(source)
    config = ModelConfig.from_timm(
        backbone.pretrained_cfg, bird_names(), STARTER_MODEL_NAME, version=STARTER_VERSION,
        bird_threshold=STARTER_BIRD_THRESHOLD, temperature=STARTER_TEMPERATURE,
        species_threshold=STARTER_SPECIES_THRESHOLD, card=card,
        extra={"weights": source, "imagenet_indices": bird_indices(),
               "about": "ImageNet-1k bird classes; bird_probability = mass of bird classes among all 1000"})
    report = export_onnx(starter_module(backbone, bird_indices()), path, config, sample=sample)
    write_card(path.parent, card, f"{path.stem}.MODEL_CARD.md")
    return path, report


def _version_of(path: Path) -> str | None:
    """The starter version an existing file was built as (None if unreadable): older ones are rebuilt."""
    try:
        return read_model_config(path).version
    except Exception:
        return None


def starter_card(weights: str) -> dict:
    """The starter's model card: what it covers (59 ImageNet classes, many only groups), its gate and verdicts."""
    species = [name for name in bird_names() if name not in GROUP_LABELS]
    return {
        "model": STARTER_MODEL_NAME, "version": STARTER_VERSION, "arch": STARTER_ARCH, "weights": weights,
        "data": {"source": "ImageNet-1k (the backbone's own classifier, no fine-tuning)", "classes": 59},
        "coverage": {
            "summary": f"59 ImageNet-1k bird classes: {len(species)} are one species (or one domestic form), "
                       f"{len(GROUP_LABELS)} name a group such as a family or genus, and North American, European "
                       "and tropical birds outside them get the nearest class or 'unsure'.",
            "groups": list(GROUP_LABELS)},
        "gate": {"kind": "ImageNet classifier; P(bird) = mass of its 59 bird classes among all 1000",
                 "bird_threshold": STARTER_BIRD_THRESHOLD,
                 "measured": "99.25% of 3,489 real bird photos pass; of 1,165 non-bird photos none does (931 "
                             "ImageNet samples, 234 from other sources); 4.3% of 23 bird drawings and toys do"},
        "abstention": {"temperature": STARTER_TEMPERATURE, "species_threshold": STARTER_SPECIES_THRESHOLD,
                       "measured": STARTER_CALIBRATION_NOTE},
        "intended_use": INTENDED_USE,
        "limits": ["Knows 59 ImageNet bird classes only, many of them groups: most of the world's species are "
                   "not among them, so read top_k as suggestions and trust 'species' only for the classes listed.",
                   "Trained models (birdclf train) replace it for real use.", *LIMITS[1:3]]}
