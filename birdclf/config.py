"""The preprocessing and label config that travels with a model, inside its ONNX metadata."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .constants import DEFAULT_BIRD_THRESHOLD, DEFAULT_SPECIES_THRESHOLD
from .errors import ModelFormatError

__all__ = ["ModelConfig", "INTERPOLATIONS"]

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")


@dataclass(frozen=True)
class ModelConfig:
    """What a model needs at inference: labels and the exact validation transform (like timm's PretrainedCfg)."""

    model_name: str
    labels: tuple[str, ...]
    input_size: int = 224
    resize_size: int = 256  # shorter side before the centre crop
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    version: str = "0"
    arch: str = ""
    bird_threshold: float = DEFAULT_BIRD_THRESHOLD
    temperature: float = 1.0  # calibration: probabilities are softmax(logits / temperature)
    species_threshold: float = DEFAULT_SPECIES_THRESHOLD  # calibrated top-1 probability for a "species" verdict
    card: Mapping[str, Any] = field(default_factory=dict)  # the model card's summary (data, metrics, limits)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        problems = []
        if not self.labels:
            problems.append("labels is empty")
        if len(set(self.labels)) != len(self.labels):
            problems.append("labels has duplicates")
        if self.input_size <= 0 or self.resize_size < self.input_size:
            problems.append(f"need 0 < input_size <= resize_size, got {self.input_size}, {self.resize_size}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} not in {INTERPOLATIONS}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 values each, std > 0")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            problems.append(f"temperature must be a positive number, got {self.temperature}")
        for name in ("bird_threshold", "species_threshold"):
            if not 0 <= float(getattr(self, name)) <= 1:
                problems.append(f"{name} must be from 0 to 1, got {getattr(self, name)}")
        if problems:
            raise ModelFormatError("invalid model config: " + "; ".join(problems))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle configs saved by older versions (inside export.pkl): fields added since get their defaults."""
        for f in fields(self):
            if f.name in state:
                value = state[f.name]
            elif f.default is not MISSING:
                value = f.default
            else:
                value = f.default_factory()  # type: ignore[misc]
            object.__setattr__(self, f.name, value)

    @property
    def num_classes(self) -> int:
        """How many labels the model predicts."""
        return len(self.labels)

    @classmethod
    def from_timm(cls, pretrained_cfg: Mapping[str, Any], labels: Sequence[str], model_name: str,
                  **overrides: Any) -> ModelConfig:
        """Build from a timm `pretrained_cfg` (input size, crop_pct, interpolation, mean, std)."""
        size = int(overrides.pop("input_size", pretrained_cfg.get("input_size", (3, 224, 224))[-1]))
        crop_pct = float(pretrained_cfg.get("crop_pct", 0.875))
        crop_mode = pretrained_cfg.get("crop_mode") or "center"
        if crop_mode != "center":  # serving implements timm's centre crop only: refuse rather than serve it wrong
            raise ModelFormatError(f"timm crop_mode {crop_mode!r} is not supported (only 'center')")
        return cls(
            model_name=model_name,
            labels=tuple(labels),
            input_size=size,
            resize_size=int(overrides.pop("resize_size", math.floor(size / crop_pct))),
            interpolation=str(overrides.pop("interpolation", pretrained_cfg.get("interpolation", "bicubic"))),
            mean=tuple(pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(pretrained_cfg.get("std", (0.229, 0.224, 0.225))),
            arch=str(pretrained_cfg.get("architecture", "")),
            **overrides,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["mean"], d["std"], d["extra"], d["card"] = list(self.mean), list(self.std), dict(self.extra), dict(self.card)
        return d

    def to_json(self) -> str:
        """Serialise for the ONNX metadata."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Rebuild from `to_dict` output, ignoring unknown keys from newer versions."""
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ModelFormatError(f"invalid model config: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Rebuild from `to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFormatError(f"model config is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelFormatError("model config is not a JSON object")
        return cls.from_dict(data)
