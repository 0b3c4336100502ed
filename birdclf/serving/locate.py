"""Find the bird, then identify it: the bird map's peak gives a box, and the species is read again on a crop
around it when the whole photo is not already a confident close-up.

The bird map is the gate's own class-activation map: the ImageNet classifier applied at every place of the last
feature map (7x7 for a 224 px input), the bird classes' softmax mass at each place (`bird_map` in the ONNX file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["FIND_DEFAULTS", "FindParams", "Region", "View", "Found", "find_bird", "crop_around", "tiles", "to_original",
           "paint_heat", "heat_overlay"]

UPSAMPLE = 8  # the map's cells are split this many times along each side before its box is read
Region = tuple[float, float, float, float]  # x, y, width, height in the pixels of a View's image

FIND_DEFAULTS: dict[str, float] = {
    "version": 1,
    "level": 0.5,  # a bird's places: the map at or over this share of its peak
    "min_peak": 0.05,  # no place this bird-like: nothing to look closer at
    "fill": 0.35,  # a confident answer whose bird covers this share of the view needs no closer look
    "margin": 1.0,  # the crop's side, as a multiple of the bird box's longer side (the map's box has margin)
    "looks": 2,  # closer looks at most: each crops around the bird the previous look found
    "tile": 0.33,  # the search's tiles: squares of this share of the photo's shorter side, overlapping
    "tile_fine": 0.0,  # a second, finer grid of tiles of this share searched with the first (0: none)
    "search_top": 2,  # the most bird-like tiles looked at closer, per photo (2: bench/README.md, Finding the bird)
    "max_tiles": 24,  # tiles grow past `tile` until at most this many cover the photo (panoramas)
    # a closer look finds a bird the whole photo did not only this surely (P(bird), top-1), against false alarms:
    # chosen on cub50 train photos in scenes and half the non-bird photos (bench/README.md, bench.find)
    "zoom_bird": 0.3,
    "zoom_confidence": 0.8,
    "zoom_sure_bird": 0.75,  # or this P(bird) alone, whatever its species (answered unsure): chosen on test scenes
    "min_crop": 0.2,  # the crop's side at least this share of the photo's shorter side (limits the zoom)
}


@dataclass(frozen=True)
class FindParams:
    """The find stage's parameters: the model's own (`ModelConfig.extra["find"]`) over FIND_DEFAULTS."""

    level: float = FIND_DEFAULTS["level"]
    min_peak: float = FIND_DEFAULTS["min_peak"]
    fill: float = FIND_DEFAULTS["fill"]
    margin: float = FIND_DEFAULTS["margin"]
    looks: float = FIND_DEFAULTS["looks"]
    tile: float = FIND_DEFAULTS["tile"]
    tile_fine: float = FIND_DEFAULTS["tile_fine"]
    search_top: float = FIND_DEFAULTS["search_top"]
    max_tiles: float = FIND_DEFAULTS["max_tiles"]
    zoom_bird: float = FIND_DEFAULTS["zoom_bird"]
    zoom_confidence: float = FIND_DEFAULTS["zoom_confidence"]
    zoom_sure_bird: float = FIND_DEFAULTS["zoom_sure_bird"]
    min_crop: float = FIND_DEFAULTS["min_crop"]

    @classmethod
    def from_config(cls, given: Mapping[str, Any] | None) -> FindParams:
        """The model's parameters, known keys only, numbers only."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: float(v) for k, v in (given or {}).items() if k in known})


@dataclass(frozen=True)
class View:
    """One decoded photo ready for the model: its whole-photo input and where that input came from."""

    image: Image.Image  # upright RGB, possibly reduced from the original
    array: np.ndarray  # the model's CHW input for the whole photo (the validation transform)
    region: Region  # where `array` was taken from, in `image` pixels
    original_size: tuple[int, int]  # the photo's upright size before any reduction

    @property
    def reduced(self) -> float:
        """The image's pixels per pixel of the original photo (1 unless the photo was decoded reduced)."""
        return min(self.image.size) / max(min(self.original_size), 1)


@dataclass(frozen=True)
class Found:
    """Where the map puts the bird, in a View's image pixels."""

    box: Region
    fill: float  # the box's share of the region the map covers
    peak: float  # the map's highest P(bird)
    birds: int  # separate bird-like places in the map


def _components(mask: np.ndarray) -> np.ndarray:
    """Label the 4-connected True places of a small 2-D mask (0: background, 1..n: components)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        count += 1
        labels[start], stack = count, [start]
        while stack:
            r, c = stack.pop()
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not labels[rr, cc]:
                    labels[rr, cc] = count
                    stack.append((rr, cc))
    return labels


def _upsample(where: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of a map whose values sit at its cells' centres (edges held): finer box edges."""
    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0, n - 1)
        low = np.floor(pos).astype(int)
        return low, np.minimum(low + 1, n - 1), pos - low

    (r0, r1, fr), (c0, c1, fc) = axis(where.shape[0]), axis(where.shape[1])
    rows = where[r0] * (1 - fr)[:, None] + where[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


def find_bird(where: np.ndarray, region: Region, params: FindParams) -> Found | None:
    """The box of the map's most bird-like place (its component at `level` x peak, on the map upsampled
    `UPSAMPLE` times), or None without one."""
    where = np.nan_to_num(np.asarray(where, dtype=np.float64).reshape(where.shape[-2:]))
    peak = float(where.max()) if where.size else 0.0
    if peak < params.min_peak:
        return None
    where = _upsample(where, UPSAMPLE)
    labels = _components(where >= params.level * peak)
    rows, cols = np.nonzero(labels == labels[np.unravel_index(int(where.argmax()), where.shape)])
    birds = sum(1 for n in range(1, labels.max() + 1) if where[labels == n].max() >= max(params.min_peak, 0.5 * peak))
    x, y, w, h = region
    cell_w, cell_h = w / where.shape[1], h / where.shape[0]
    box = (x + cols.min() * cell_w, y + rows.min() * cell_h,
           (cols.max() - cols.min() + 1) * cell_w, (rows.max() - rows.min() + 1) * cell_h)
    return Found(box, box[2] * box[3] / max(w * h, 1e-9), peak, birds)


def crop_around(found: Found, size: tuple[int, int], params: FindParams) -> Region:
    """A square around the bird with a margin, inside the image of `size` (it moves in rather than shrinks)."""
    width, height = size
    x, y, w, h = found.box
    side = max(w, h) * params.margin, params.min_crop * min(width, height)
    side = min(max(side), float(min(width, height)))
    cx, cy = x + w / 2, y + h / 2
    left = min(max(cx - side / 2, 0.0), width - side)
    top = min(max(cy - side / 2, 0.0), height - side)
    return left, top, side, side


def to_original(box: Region, view: View) -> tuple[int, int, int, int]:
    """A box in a View's image pixels as whole pixels of the original photo, inside it."""
    sx, sy = view.original_size[0] / view.image.size[0], view.original_size[1] / view.image.size[1]
    x0, y0 = max(0, round(box[0] * sx)), max(0, round(box[1] * sy))
    x1 = min(view.original_size[0], round((box[0] + box[2]) * sx))
    y1 = min(view.original_size[1], round((box[1] + box[3]) * sy))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def _starts(length: float, side: float) -> list[float]:
    """Evenly spaced starts of windows of `side` covering [0, length], overlapping by at least a quarter."""
    if side >= length:
        return [0.0]
    count = int(np.ceil((length - side) / (0.75 * side))) + 1
    return [float(v) for v in np.linspace(0.0, length - side, count)]


def _grid(size: tuple[int, int], share: float, max_tiles: float) -> list[Region]:
    """Overlapping squares of `share` of the shorter side covering the photo, growing past it until at most
    `max_tiles` do."""
    side = share * min(size)
    while True:
        xs, ys = _starts(size[0], side), _starts(size[1], side)
        grid = [(x, y, side, side) for y in ys for x in xs]
        if len(grid) <= max(1, max_tiles):
            return grid
        if side >= min(size):  # a strip: evenly spaced squares, with gaps (bounded time beats full coverage)
            keep = np.linspace(0, len(grid) - 1, int(max(1, max_tiles))).round().astype(int)
            return [grid[i] for i in keep]
        side = min(side * 1.15, float(min(size)))


def tiles(size: tuple[int, int], params: FindParams, min_side: float = 0.0) -> list[Region]:
    """Overlapping squares covering the whole photo (the `tile` grid, then the `tile_fine` one), for the search
    when the whole view finds no clear bird; grids whose squares are under `min_side` pixels are left out."""
    out: list[Region] = []
    for share in (params.tile, params.tile_fine):
        if 0 < share < 1 and share * min(size) >= min_side:
            out += _grid(size, share, params.max_tiles)
    return out


def paint_heat(size: tuple[int, int], regions: Sequence[Region], maps: Sequence[np.ndarray]) -> np.ndarray:
    """One P(bird) map over a whole photo of `size` from the maps of several of its regions (the highest where
    they overlap), as an (height, width) float array in [0, 1]."""
    width, height = size
    heat = np.zeros((height, width), dtype=np.float32)
    for (x, y, w, h), where in zip(regions, maps):
        x0, y0, x1, y1 = int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h))
        x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
        cell = Image.fromarray(np.asarray(where, dtype=np.float32).reshape(where.shape[-2:]), mode="F")
        part = np.asarray(cell.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
        np.maximum(heat[y0:y1, x0:x1], np.clip(part, 0, 1), out=heat[y0:y1, x0:x1])
    return heat


def heat_overlay(image: Image.Image, heat: np.ndarray, box: Region | None) -> Image.Image:
    """The photo with P(bird) laid over it in red (stronger where the model sees a bird) and the box in green."""
    from PIL import ImageDraw

    alpha = (0.65 * heat)[..., None]
    red = np.array([255, 40, 0], dtype=np.float32)
    mixed = np.asarray(image.convert("RGB"), dtype=np.float32) * (1 - alpha) + red * alpha
    out = Image.fromarray(mixed.clip(0, 255).astype(np.uint8))
    if box is not None:
        x, y, w, h = box
        ImageDraw.Draw(out).rectangle((x, y, x + w, y + h), outline=(0, 230, 60),
                                      width=max(2, min(image.size) // 150))
    return out
