"""The INT8 model's fp32 second look: which answers sit so close to changing that INT8's noise could change them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..constants import SECOND_LOOK_BELOW_SPECIES, SECOND_LOOK_BIRD_BAND, SECOND_LOOK_MARGIN, SECOND_LOOK_OTHER_RATIO
from ..errors import ModelFormatError
from .other_bird import OtherBird

__all__ = ["SecondLook"]


@dataclass(frozen=True)
class SecondLook:
    """When an INT8 answer is looked at again in fp32 (the rule travels in the model's metadata)."""

    margin: float = SECOND_LOOK_MARGIN  # top-1 and top-2 calibrated probabilities closer than this
    below_species: float = SECOND_LOOK_BELOW_SPECIES  # top-1 this little under the species threshold
    bird_band: float = SECOND_LOOK_BIRD_BAND  # P(bird) this close to the bird threshold
    other_ratio: float = SECOND_LOOK_OTHER_RATIO  # P(other bird) under its threshold by less than this factor

    @classmethod
    def from_config(cls, raw: Any) -> SecondLook | None:
        """The rule from a model's `extra["second_look"]`; None when the model has none."""
        if not isinstance(raw, dict):
            return None
        try:
            return cls(**{k: float(v) for k, v in raw.items() if k in cls.__dataclass_fields__})
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"the model's second-look rule is not a set of numbers: {raw!r:.200}") from exc

    def to_dict(self) -> dict[str, float]:
        """A JSON-ready dict."""
        return asdict(self)

    def rows(self, probs: np.ndarray, bird: np.ndarray | None, species_threshold: float, bird_threshold: float,
             other: np.ndarray | None = None, other_bird: OtherBird | None = None) -> np.ndarray:
        """Which rows of a batch (calibrated species probabilities, P(bird); for a model with an other-bird class,
        P(other) and the class's rule) to compute again in fp32."""
        top = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.pad(probs, ((0, 0), (1, 0)))
        again = (top[:, 1] - top[:, 0]) < self.margin
        again |= (top[:, 1] < species_threshold) & (top[:, 1] >= species_threshold - self.below_species)
        if bird is not None:
            again |= np.abs(bird - bird_threshold) < self.bird_band
        if other is not None and other_bird is not None:
            # INT8 moves a small P(other) by a factor, not by a fixed amount: look again at every answer the other-bird
            # rule alone holds back (fp32 would answer `species` for many), and at those it lets through narrowly
            held = other_bird.holds_back(other, top[:, 1])
            sure = top[:, 1] >= species_threshold
            if bird is not None:
                sure &= bird >= bird_threshold
            again |= held & sure
            again |= ~held & (other * self.other_ratio > other_bird.threshold)
        return again
