"""fastai DataLoaders with presizing, whose validation transform is exactly the serving transform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..serving.imaging import load_image, resize_center_crop

__all__ = ["BirdImage", "EvalResizeCrop", "TrainResizeCrop", "LabelLookup", "make_dataloaders", "default_presize"]

from fastai.vision.all import (
    CategoryBlock,
    DataBlock,
    ImageBlock,
    IndexSplitter,
    Normalize,
    PILImage,
    RandomResizedCrop,
    Transform,
    aug_transforms,
)


class BirdImage(PILImage):
    """A fastai image decoded by birdclf (EXIF orientation, transparency, limits) exactly as at serving time."""

    @classmethod
    def create(cls, fn: Any, **kwargs: Any) -> BirdImage:
        if isinstance(fn, (str, Path, bytes, bytearray)):
            return cls(load_image(fn))
        return super().create(fn, **kwargs)


class EvalResizeCrop(Transform):
    """Validation/test/inference item transform: shorter side to `resize_size`, centre crop `input_size`."""

    split_idx, order = 1, 1

    def __init__(self, resize_size: int, input_size: int, interpolation: str) -> None:
        super().__init__()
        self.resize_size, self.input_size, self.interpolation = resize_size, input_size, interpolation

    def encodes(self, x: PILImage) -> PILImage:
        return type(x)(resize_center_crop(x, self.resize_size, self.input_size, self.interpolation))


class TrainResizeCrop(EvalResizeCrop):
    """Train item transform (presizing): the same resize and centre crop, to the presize (its own class, because
    fastai's DataBlock keeps one transform per class)."""

    split_idx = 0


class LabelLookup:
    """get_y: path -> display label (picklable, so `learn.export` works)."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def __call__(self, path: Any) -> str:
        return self.mapping[str(path)]


def default_presize(input_size: int) -> int:
    """Item size for presizing: a margin for the batch-level random crop, rotation and zoom."""
    return int(round(input_size * 1.3 / 8) * 8)


def _train_item_crop(item_crop: str, size: int, min_scale: float, config: ModelConfig) -> Transform:
    """The train split's item transform: deterministic resize + centre crop, or fastai's RandomResizedCrop.

    Kaggle's photos are 224 px crops tight around the bird, so a random item crop followed by the batch's random
    crop (`aug_transforms`) can cut the bird out; the batch crop alone is the augmentation by default."""
    if item_crop == "resize":
        crop: Transform = TrainResizeCrop(size, size, config.interpolation)
    elif item_crop == "random":
        crop = RandomResizedCrop(size, min_scale=min_scale)
    else:
        from ..errors import DataError

        raise DataError(f"item_crop must be 'resize' or 'random', got {item_crop!r}")
    crop.split_idx = 0
    return crop


def make_dataloaders(splits: dict[str, list[tuple[Path, str]]], config: ModelConfig, bs: int = 32,
                     presize: int | None = None, augment: bool = True, num_workers: int | None = None,
                     device: Any = None, seed: int = 42, min_scale: float = 0.35, batch_min_scale: float = 0.75,
                     item_crop: str = "resize") -> Any:
    """DataBlock -> DataLoaders: train items resized to `presize` (fastai presizing; `item_crop="random"`: a random
    crop) then augmented and cropped on the batch; valid items go through EvalResizeCrop only."""
    train, valid = splits["train"], splits.get("valid") or []
    if not train or not valid:
        from ..errors import DataError

        raise DataError(f"need train and valid images, got {len(train)} train and {len(valid)} valid")
    every = [item for items in splits.values() for item in items]
    lookup = LabelLookup({str(p): label for p, label in every})
    vocab = sorted({label for _, label in train + valid})
    eval_crop = EvalResizeCrop(config.resize_size, config.input_size, config.interpolation)
    if augment:
        train_crop = _train_item_crop(item_crop, presize or default_presize(config.input_size), min_scale, config)
        item_tfms = [train_crop, eval_crop]
        batch_tfms = [*aug_transforms(size=config.input_size, min_scale=batch_min_scale),
                      Normalize.from_stats(config.mean, config.std)]
    else:
        eval_crop.split_idx = None  # every split gets the validation transform
        item_tfms = [eval_crop]
        batch_tfms = [Normalize.from_stats(config.mean, config.std)]
    block = DataBlock(blocks=(ImageBlock(cls=BirdImage), CategoryBlock(vocab=vocab)), get_y=lookup,
                      splitter=IndexSplitter(list(range(len(train), len(train) + len(valid)))),
                      item_tfms=item_tfms, batch_tfms=batch_tfms)
    kwargs: dict[str, Any] = {"bs": bs, "seed": seed}
    if num_workers is not None:
        kwargs["num_workers"] = num_workers
    if device is not None:
        kwargs["device"] = device
    return block.dataloaders([p for p, _ in train + valid], **kwargs)
