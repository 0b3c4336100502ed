"""The fastai Learner birdclf trains: a timm body with ImageNet weights and fastai's head, and its serving config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..constants import CPU_ARCH, GPU_ARCH

__all__ = ["default_arch", "top5_accuracy", "arch_config", "make_learner"]


def default_arch() -> str:
    """efficientnet_b3a on a GPU, tf_efficientnet_lite0 on CPU."""
    import torch

    return GPU_ARCH if torch.cuda.is_available() else CPU_ARCH


def top5_accuracy(inp: Any, targ: Any) -> Any:
    """Top-5 accuracy (top-k for fewer than 5 classes)."""
    from fastai.metrics import top_k_accuracy

    return top_k_accuracy(inp, targ, k=min(5, inp.shape[-1]))


def arch_config(arch: str, labels: list[str], input_size: int | None = None, model_name: str = "") -> ModelConfig:
    """The serving config of `arch` from timm's pretrained_cfg (mean, std, crop_pct, interpolation)."""
    import timm

    cfg = timm.create_model(arch, pretrained=False, num_classes=0).pretrained_cfg
    extra = {} if input_size is None else {"input_size": input_size}
    return ModelConfig.from_timm(cfg, labels, model_name or arch, **extra)


def make_learner(dls: Any, arch: str, config: ModelConfig, pretrained: bool = True, path: str | os.PathLike = ".",
                 train_bn: bool = True, label_smoothing: float = 0.1, freeze_bn: bool = True) -> Any:
    """A fastai Learner: timm body (ImageNet weights from the hub or offline packages) + fastai head, frozen; the
    backbone's ImageNet classifier is kept as `learn.bird_gate` (exported beside the head)."""
    from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
    from fastai.metrics import F1Score, accuracy
    from fastai.vision.all import Learner, TimmBody, add_head, default_split

    from .gate import BirdGate, imagenet_classifier
    from .weights import create_model

    backbone, source = create_model(arch, pretrained=pretrained)  # with its ImageNet classifier: the bird gate
    classifier = imagenet_classifier(backbone) if pretrained else None
    backbone.reset_classifier(0)
    body = TimmBody(backbone, pretrained, None, 3)
    model = add_head(body, backbone.num_features, dls.c, pool=body.needs_pool)
    loss = LabelSmoothingCrossEntropyFlat(eps=label_smoothing) if label_smoothing else CrossEntropyLossFlat()
    learn = Learner(dls, model, splitter=default_split, path=Path(path), train_bn=train_bn, loss_func=loss,
                    metrics=[accuracy, top5_accuracy, F1Score(average="weighted")])
    if pretrained:
        learn.freeze()
    if freeze_bn and pretrained:  # keep the pretrained BN statistics (see FreezeBodyBatchNorm)
        from .callbacks import FreezeBodyBatchNorm

        learn.add_cb(FreezeBodyBatchNorm())
    learn.birdclf_config = ModelConfig.from_dict(config.to_dict() | {"labels": list(dls.vocab), "arch": arch})
    learn.weights_source = source
    learn.bird_gate = BirdGate(classifier) if classifier is not None else None
    return learn
