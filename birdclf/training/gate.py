"""The bird gate every exported model carries; P(bird) = the softmax mass of ImageNet's 59 bird classes.

Two kinds, chosen by measurement (bench.gate, cub50):
- shared: the backbone's own ImageNet classifier beside the new head, on the same body features. Free, and exact
  while the body is frozen (head-only runs): 0% of 1,165 non-bird photos passed, 99.25% of 3,489 bird photos.
- fixed: once fine-tuning has moved the body, the shared gate drifts (after 3 epochs: 1.3% of non-ImageNet
  non-birds passed, and no threshold kept both targets), so fine-tuned models get a fixed branch instead: the
  starter's frozen ImageNet EfficientNet-Lite0 on the same input, which gives the starter's own figures.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import OUTPUT_BIRD, OUTPUT_LOGITS, OUTPUT_MAP, OUTPUT_OTHER
from .imagenet_birds import bird_indices
from .other_birds import with_other_bird

__all__ = ["bird_map", "BirdGate", "FixedGate", "GatedModel", "SideGatedModel", "imagenet_classifier", "gated_model",
           "attach_gate", "fixed_gate"]


def bird_map(classifier: nn.Linear, indices: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """P(bird) at each place of an (N, C, h, w) feature map: the ImageNet classifier applied to every location
    (a class-activation map through the softmax), the bird classes' mass -> (N, h, w). Its mean over places is not
    the pooled P(bird), but its peak says where the bird is (the find stage in birdclf.serving.locate)."""
    weight = classifier.weight.float()[:, :, None, None]
    logits = F.conv2d(features.float(), weight, classifier.bias.float())
    return torch.softmax(logits, dim=1).index_select(1, indices).sum(dim=1)


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

    def map(self, features: torch.Tensor) -> torch.Tensor:
        """P(bird) at each place of the body's (N, C, h, w) features."""
        return bird_map(self.classifier, self.indices, features)


class GatedModel(nn.Module):
    """A fastai model (TimmBody, head) plus the bird gate: (species logits, P(bird), bird map) from one pass of the
    body (no map when the body pools its own features); with an `other` Linear (an other-bird class, on the head's
    hidden layer), its logit last."""

    def __init__(self, model: nn.Module, gate: BirdGate, other: nn.Module | None = None) -> None:
        super().__init__()
        self.body, self.head, self.gate, self.other = model[0], model[1], gate, other
        names = [OUTPUT_LOGITS, OUTPUT_BIRD] + ([OUTPUT_MAP] if self.body.needs_pool else [])
        self.output_names = names + ([OUTPUT_OTHER] if other is not None else [])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.body(x)
        species, other = (self.head(features), None) if self.other is None else \
            with_other_bird(self.head, self.other, features)
        extra = () if other is None else (other,)
        if not self.body.needs_pool:
            return species, self.gate(features.flatten(1)), *extra
        where = self.gate.map(features)  # before the pooled gate: INT8 keeps the gate's tail (after the last Gemm)
        pooled = self.body.model.forward_head(features, pre_logits=True)
        return species, self.gate(pooled.flatten(1)), where, *extra


class FixedGate(nn.Module):
    """A frozen ImageNet model beside the trained one: P(bird) from the model's own input, re-normalised for it."""

    def __init__(self, imagenet_model: nn.Module, mean: tuple, std: tuple, gate_mean: tuple, gate_std: tuple,
                 indices: list[int] | None = None) -> None:
        super().__init__()
        self.model = imagenet_model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        shape = (1, 3, 1, 1)
        # x_gate = (x * std + mean - gate_mean) / gate_std, as one per-channel scale and shift
        self.register_buffer("scale", (torch.tensor(std) / torch.tensor(gate_std)).reshape(shape))
        self.register_buffer("shift", ((torch.tensor(mean) - torch.tensor(gate_mean)) / torch.tensor(gate_std))
                             .reshape(shape))
        self.register_buffer("indices", torch.tensor(indices or bird_indices(), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.model(x * self.scale + self.shift), dim=1)
        return probs.index_select(1, self.indices).sum(dim=1)

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(bird), bird map): the same P(bird) as forward, and P(bird) at each place of the last features."""
        features = self.model.forward_features(x * self.scale + self.shift)
        where = bird_map(self.model.get_classifier(), self.indices, features)
        probs = torch.softmax(self.model.forward_head(features), dim=1)
        return probs.index_select(1, self.indices).sum(dim=1), where

    def train(self, mode: bool = True) -> FixedGate:
        super().train(mode)
        self.model.eval()  # frozen, always: its BatchNorm keeps the ImageNet statistics
        return self


class SideGatedModel(nn.Module):
    """The trained model plus a fixed gate branch on the same input: (species logits, P(bird), bird map), and an
    `other` Linear's other-bird logit last when there is one."""

    def __init__(self, model: nn.Module, gate: FixedGate, other: nn.Module | None = None) -> None:
        super().__init__()
        self.model, self.gate, self.other = model, gate, other
        self.output_names = [OUTPUT_LOGITS, OUTPUT_BIRD, OUTPUT_MAP] + ([OUTPUT_OTHER] if other is not None else [])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.other is None:
            return self.model(x), *self.gate.forward_with_map(x)
        species, other = with_other_bird(self.model[1], self.other, self.model[0](x))
        return species, *self.gate.forward_with_map(x), other


def fixed_gate(mean: tuple, std: tuple) -> FixedGate:
    """The starter's ImageNet EfficientNet-Lite0 (offline weights) as a fixed gate for inputs normalised with
    `mean` and `std`."""
    from ..constants import STARTER_ARCH
    from .weights import create_model

    model, _ = create_model(STARTER_ARCH, pretrained=True)
    cfg = model.pretrained_cfg
    return FixedGate(model, tuple(mean), tuple(std), tuple(cfg["mean"]), tuple(cfg["std"]))


def imagenet_classifier(backbone: Any) -> nn.Linear | None:
    """The 1000-class ImageNet classifier of a timm model, or None if it has none."""
    classifier = backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
    if isinstance(classifier, nn.Linear) and classifier.out_features == 1000:
        return copy.deepcopy(classifier)
    return None


def gated_model(learn: Any) -> nn.Module:
    """The model to export: with its gate (shared or fixed) when the Learner has one, else logits only; in eval
    mode, and with the gate on the device of the Learner's model (a gate is made on the CPU)."""
    gate, other = getattr(learn, "bird_gate", None), getattr(learn, "other_bird", None)
    device = next(learn.model.parameters()).device
    if gate is None and other is not None:
        from ..errors import BirdclfError

        raise BirdclfError("an other-bird class is exported beside the bird gate: this model has no gate "
                           "(no pretrained ImageNet classifier)")
    if isinstance(gate, FixedGate):
        return SideGatedModel(learn.model, gate, other).to(device).eval()
    return GatedModel(learn.model, gate, other).to(device).eval() if gate is not None else learn.model.eval()


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
