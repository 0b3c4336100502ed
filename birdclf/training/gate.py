"""The bird gate every exported model carries: the backbone's own ImageNet classifier, kept beside the new head,
on the same body features; P(bird) = the softmax mass of ImageNet's 59 bird classes among all 1000.

Exact while the body is frozen (the starter's measured behaviour); after fine-tuning the body moves, so the
gate's threshold is re-checked on the validation birds at the end of every run (see `calibration`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .imagenet_birds import bird_indices

__all__ = ["BirdGate", "GatedModel", "imagenet_classifier", "gated_model", "attach_gate"]


class BirdGate(nn.Module):
    """ImageNet logits from pooled body features -> P(bird). Kept on the Learner (pickled in export.pkl)."""

    def __init__(self, classifier: nn.Linear, indices: list[int] | None = None) -> None:
        super().__init__()
        self.classifier = copy.deepcopy(classifier).eval()
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.register_buffer("indices", torch.tensor(indices or bird_indices(), dtype=torch.long))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.classifier(pooled.float()), dim=1)
        return probs.index_select(1, self.indices).sum(dim=1)


class GatedModel(nn.Module):
    """A fastai model (TimmBody, head) plus the bird gate: (species logits, P(bird)) from one pass of the body."""

    def __init__(self, model: nn.Module, gate: BirdGate) -> None:
        super().__init__()
        self.body, self.head, self.gate = model[0], model[1], gate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        timm_model = self.body.model
        pooled = timm_model.forward_head(features, pre_logits=True) if self.body.needs_pool else features
        return self.head(features), self.gate(pooled.flatten(1))


def imagenet_classifier(backbone: Any) -> nn.Linear | None:
    """The 1000-class ImageNet classifier of a timm model, or None if it has none."""
    classifier = backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
    if isinstance(classifier, nn.Linear) and classifier.out_features == 1000:
        return copy.deepcopy(classifier)
    return None


def gated_model(learn: Any) -> nn.Module:
    """The model to export: gated when the Learner has a gate, else the plain model (logits only)."""
    gate = getattr(learn, "bird_gate", None)
    return GatedModel(learn.model, gate).eval() if gate is not None else learn.model.eval()


def attach_gate(learn: Any) -> bool:
    """Give a Learner that has none (runs saved before gates existed) the gate of its pretrained backbone."""
    if getattr(learn, "bird_gate", None) is not None:
        return True
    if str(getattr(learn, "weights_source", "random")) == "random":
        return False
    from ..errors import WeightsUnavailableError
    from .weights import create_model

    try:
        backbone, _ = create_model(learn.birdclf_config.arch, pretrained=True)
    except WeightsUnavailableError:
        return False
    classifier = imagenet_classifier(backbone)
    learn.bird_gate = BirdGate(classifier) if classifier is not None else None
    return learn.bird_gate is not None
