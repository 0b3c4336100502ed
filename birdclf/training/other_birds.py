"""An "other bird" class (outlier exposure, Hendrycks et al. 2019): photos of species outside the data teach the head
to say "none of mine", so that a photo of a species the model never saw is held back (`unsure`) instead of named.

The head is fitted with one more output on cached features (`--fast-head --epochs 0`). Its species outputs stay the
Learner's own head (fastai sees the data's classes only); the extra output becomes `learn.other_bird`, a Linear on
the same hidden layer, exported as the model's `other_bird` output. Measured in bench/open_set.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["other_bird_photos", "widen_head", "split_head", "with_other_bird"]

logger = logging.getLogger(__name__)


def other_bird_photos(folder: str | os.PathLike, labels: list[str]) -> list[Path]:
    """The images under `folder` (any layout, searched recursively), less those in a folder named like one of the
    data's species `labels` (whitespace, underscores and case aside): those are not "other" birds."""
    from ..data.labels import label_key
    from ..data.layout import list_images
    from ..errors import DataError

    def key(name: str) -> str:  # CUB's American_Goldfinch is Kaggle's AMERICAN GOLDFINCH
        return label_key(name.replace("_", " "))

    root = Path(folder)
    known = {key(label) for label in labels}
    files = list_images(root)
    kept = [f for f in files if not any(key(part) in known for part in (root.name, *f.relative_to(root).parent.parts))]
    if len(kept) < len(files):
        logger.info("other birds: %d photos of the data's own species left out of %s", len(files) - len(kept), root)
    if not kept:
        raise DataError(f"no photos of other birds in {root}: it needs images of species outside the data "
                        f"({len(files)} found, all in folders named after the data's species)")
    return kept


def widen_head(head: Any, seed: int = 0) -> Any:
    """The head with one more output (the other-bird class), sharing every layer before its last Linear; the new
    row drawn as nn.Linear draws its rows, from `seed` (not the process's random state: runs repeat)."""
    import torch
    from torch import nn

    from ..errors import BirdclfError

    last = head[-1]
    if not isinstance(last, nn.Linear):
        raise BirdclfError(f"an other-bird class needs a head ending in a Linear layer, not {type(last).__name__}")
    wide = nn.Linear(last.in_features, last.out_features + 1, bias=last.bias is not None)
    bound = 1 / last.in_features ** 0.5  # nn.Linear's own init range (kaiming_uniform with a=sqrt(5))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the species rows start where the head's own start
        wide.weight[:-1] = last.weight
        wide.weight[-1] = (torch.rand(last.in_features, generator=generator) * 2 - 1) * bound
        if last.bias is not None:
            wide.bias[:-1] = last.bias
            wide.bias[-1] = 0.0
    return nn.Sequential(*head[:-1], wide.to(last.weight.device))


def split_head(head: Any, wide: Any) -> Any:
    """After fitting `widen_head(head)`: its species rows into `head`'s last Linear, and its other-bird row as a
    Linear of one output (returned)."""
    import torch
    from torch import nn

    last, fitted = head[-1], wide[-1]
    other = nn.Linear(fitted.in_features, 1, bias=fitted.bias is not None).to(fitted.weight.device)
    with torch.no_grad():
        last.weight.copy_(fitted.weight[:-1])
        other.weight.copy_(fitted.weight[-1:])
        if fitted.bias is not None:
            last.bias.copy_(fitted.bias[:-1])
            other.bias.copy_(fitted.bias[-1:])
    return other



def with_other_bird(head: Any, other: Any, features: Any) -> tuple[Any, Any]:
    """(species logits, other-bird logit) of a fastai head and its `other` Linear, from one pass of the head."""
    hidden = head[:-1](features)
    return head[-1](hidden), other(hidden)
