"""The "other bird" rule of models trained with an other-bird class: when a photo is not one of the model's species."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..constants import OTHER_BIRD_PASS
from ..errors import ModelFormatError

__all__ = ["OtherBird"]


@dataclass(frozen=True)
class OtherBird:
    """Hold a photo back (`unsure`) when the "other bird" class wins, or its calibrated probability is above
    `threshold`: what `pass_rate` of the known species' photos stay under, out of fold (the rule travels in the
    model's metadata, `extra["other_bird"]`)."""

    threshold: float
    pass_rate: float = OTHER_BIRD_PASS
    photos: int = 0  # photos of other species the class was trained on

    @classmethod
    def from_config(cls, raw: Any) -> OtherBird | None:
        """The rule from a model's `extra["other_bird"]`; None when the model has none."""
        if raw is None:
            return None
        try:
            rule = cls(float(raw["threshold"]), float(raw.get("pass_rate", OTHER_BIRD_PASS)),
                       int(raw.get("photos", 0)))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ModelFormatError(f"the model's other-bird rule is not a threshold: {raw!r:.200}") from exc
        if not (math.isfinite(rule.threshold) and 0 <= rule.threshold <= 1):
            raise ModelFormatError(f"the model's other-bird threshold must be from 0 to 1, got {rule.threshold}")
        return rule

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def holds_back(self, other: Any, confidence: Any) -> Any:
        """Whether P(other bird) `other` beside the top species' `confidence` means "not one of mine": one bool for
        two numbers, one per row for two arrays."""
        return (other > self.threshold) | (other > confidence)
