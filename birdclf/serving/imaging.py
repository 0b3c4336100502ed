"""Decode untrusted images with bounded memory and apply the model's validation transform (Pillow + numpy)."""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import ModelConfig
from ..constants import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from ..errors import BusyError, EmptyImageError, ImageTooLargeError, InvalidImageError
from ..formats import FORMATS_IN_WORDS, PILLOW_FORMATS
from .hardening import DecodeBudget, FileFacts, decode_budget, decode_cost, precheck
from .hardening.memory import STRIP_BYTES

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["ORIGINAL_SIZE", "ImageSource", "ImageLimits", "load_image", "reduce_factor", "resize_center_crop",
           "center_crop_region", "resize_region", "normalize",
           "preprocess"]

logger = logging.getLogger(__name__)

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike, Image.Image]

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
ORIGINAL_SIZE = "birdclf_original_size"  # load_image's images: the upright size before any reduction
_MAX_RESIZED_ASPECT = 4  # beyond this long/short ratio only the centre crop's region is resized (bounded memory)


@dataclass(frozen=True)
class ImageLimits:
    """Byte and pixel limits for untrusted images (the serving ones come from Settings: from_settings)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        """The limits BIRDCLF_MAX_BYTES and BIRDCLF_MAX_PIXELS set."""
        return cls(settings.max_bytes, settings.max_pixels)


def _read_bytes(source: ImageSource, limits: ImageLimits) -> bytes:
    """Get the raw bytes of a path or buffer, enforcing the byte limit before reading."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"no such image file: {path}")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageTooLargeError(f"{path.name} is {size} bytes, over the {limits.max_bytes}-byte limit")
        data = path.read_bytes()
    else:
        data = source if isinstance(source, bytes) else bytes(source)
    if not data:
        raise EmptyImageError("empty image: zero bytes received")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    return data


def _to_rgb(img: Image.Image, scale_max: float | None = None) -> Image.Image:
    """Convert any mode to RGB; transparent areas become white, not black; 16/32-bit scaled to 8-bit."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = scale_max if scale_max is not None else float(arr.max())
        img = Image.fromarray((arr * (255.0 / (top or 1.0))).clip(0, 255).astype(np.uint8))
    return img.convert("RGB")


def reduce_factor(size: tuple[int, int], min_short_side: int | None) -> int:
    """The integer box-reduction that keeps the shorter side at least `min_short_side` (1: keep as is)."""
    if not min_short_side:
        return 1
    return max(1, min(size) // int(min_short_side))


def _to_rgb_reduced(img: Image.Image, factor: int) -> Image.Image:
    """RGB at 1/factor size, converted strip by strip so that no second full-size copy is ever made."""
    width, height = img.size
    scale_max = None
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        scale_max = float(img.getextrema()[1] or 1.0)
    rows = max(factor, (STRIP_BYTES // max(1, width * 4)) // factor * factor)
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = _to_rgb(img.crop((0, top, width, min(height, top + rows))), scale_max)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return out


def load_image(source: ImageSource, limits: ImageLimits | None = None, min_short_side: int | None = None,
               budget: DecodeBudget | None = None) -> Image.Image:
    """Decode an image (JPEG, PNG, WebP, GIF first frame, BMP, TIFF) to RGB with EXIF orientation applied.

    Limits are checked before any pixel is decoded. With `min_short_side`, large images are decoded at reduced
    size (JPEG DCT scaling) or box-reduced right after decoding, never below that shorter side; images whose
    shorter side is under 4x `min_short_side` decode exactly as without it. Decoding holds `budget` memory.
    The photo's upright size before any reduction is in `info[ORIGINAL_SIZE]` (boxes are given in its pixels).
    """
    if isinstance(source, Image.Image):
        rgb = _to_rgb(ImageOps.exif_transpose(source) or source)
        rgb.info[ORIGINAL_SIZE] = rgb.size
        return rgb
    limits = limits or ImageLimits()
    data = _read_bytes(source, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own pixel limit follows open()
            facts = precheck(data)  # check: parse bombs are refused before Pillow parses anything
            img = _open(data, limits)  # open: headers only, and the pixel limit
            width, height = img.size
            budget = budget or decode_budget()
            factor, cost = _decode_plan(img, facts, min_short_side, budget)
            with budget.reserve(cost):  # decode, holding its memory until the upright RGB copy exists
                img.load()
                rgb, orientation = _to_rgb_at(img, factor), _orientation(img)  # a PNG's eXIf is found by decoding
                del img  # the full-size decode is freed before the upright copy is made
                upright = rgb.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else rgb
                upright.info[ORIGINAL_SIZE] = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
                return upright
    except (ImageTooLargeError, InvalidImageError, BusyError):
        raise
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit, refused inside open()
        raise ImageTooLargeError(f"image has too many pixels, over the {limits.max_pixels}-pixel limit") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"not a readable image (supported: {FORMATS_IN_WORDS})") from exc
    except MemoryError as exc:
        raise ImageTooLargeError("image is too large to decode") from exc
    except Exception as exc:  # Pillow raises many types on malformed files (OSError, SyntaxError, struct.error, ...)
        logger.debug("undecodable image: %s: %s", type(exc).__name__, exc)
        raise InvalidImageError("corrupt or truncated image: it could not be decoded") from exc


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open (headers only) one of the table's formats and check its pixel count before anything is decoded."""
    img = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the {limits.max_pixels}-pixel limit")
    if min(width, height) < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    img.seek(0)  # first frame of animations
    return img


def _decode_plan(img: Image.Image, facts: FileFacts, min_short_side: int | None,
                 budget: DecodeBudget) -> tuple[int, int]:
    """Draft a large JPEG towards 2x `min_short_side`; return the box-reduction factor and the decode's cost in
    bytes, refusing an image whose cost is over the whole budget."""
    width, height = img.size
    if min_short_side and img.format in ("JPEG", "MPO") and min(width, height) >= 4 * min_short_side:
        scale = min(width, height) / (2 * min_short_side)  # libjpeg's DCT scaling: decode at 1/2..1/8 size
        img.draft(img.mode if img.mode in ("RGB", "L", "CMYK") else "RGB",
                  (max(1, int(width / scale)), max(1, int(height / scale))))
    factor = reduce_factor(img.size, 2 * min_short_side if min_short_side else None)
    factor = factor if factor >= 2 else 1
    # a PNG's eXIf chunk is found only by decoding (getexif() would decode it here, outside the budget): count an
    # upright copy for every PNG whose EXIF is not known yet
    turned = img.format == "PNG" and "exif" not in img.info or _orientation(img) != 1
    cost = decode_cost(img, (width, height), facts, factor, upright_copy=turned)
    if cost > budget.capacity:
        raise ImageTooLargeError(
            f"image is too large to decode here: this {width}x{height} {img.format} needs about {cost >> 20} MiB, "
            f"over the server's decode budget of {budget.capacity >> 20} MiB; send a smaller image")
    return factor, cost


def _to_rgb_at(img: Image.Image, factor: int) -> Image.Image:
    """A decoded image as RGB at 1/`factor` size; large ones are converted in strips (no second full-size copy)."""
    big = img.size[0] * img.size[1] * 4 > 2 * STRIP_BYTES
    return _to_rgb_reduced(img, factor) if (factor > 1 or big) else _to_rgb(img)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored); a broken EXIF block must not lose an otherwise good photo."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def resize_center_crop(img: Image.Image, resize_size: int, crop_size: int,
                       interpolation: str = "bicubic") -> Image.Image:
    """Resize the shorter side to `resize_size`, then centre-crop a square (torchvision Resize + CenterCrop)."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize_size, int(resize_size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    if new_long > _MAX_RESIZED_ASPECT * max(resize_size, crop_size):
        # A strip of 1x65500 pixels would resize to 256x16.8M (17 GB): resize only the crop's region of the source
        # (the same sampling grid; values may differ by a grey level from resizing the whole image).
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)
        return img.resize((crop_size, crop_size), _RESAMPLE[interpolation], box=box)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), _RESAMPLE[interpolation])
    return img.crop((left, top, left + crop_size, top + crop_size))


def center_crop_region(size: tuple[int, int], resize_size: int, crop_size: int) -> tuple[float, float, float, float]:
    """Where `resize_center_crop` takes its square from, in the pixels of an image of `size`: (x, y, w, h)."""
    width, height = size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize_size * long / short)
    new_w, new_h = (resize_size, new_long) if width <= height else (new_long, resize_size)
    sx, sy = width / new_w, height / new_h
    top, left = int(round((new_h - crop_size) / 2.0)), int(round((new_w - crop_size) / 2.0))
    return left * sx, top * sy, crop_size * sx, crop_size * sy


def resize_region(img: Image.Image, region: tuple[float, float, float, float], size: int,
                  interpolation: str = "bicubic") -> Image.Image:
    """The (x, y, w, h) region of an image resized to a `size` square (reading only that region)."""
    x, y, w, h = region
    return img.resize((size, size), _RESAMPLE[interpolation], box=(x, y, x + w, y + h))


def normalize(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """RGB image to a float32 CHW array, scaled to [0, 1] then normalised."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(source: ImageSource, config: ModelConfig, limits: ImageLimits | None = None,
               budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode (bounded memory) and transform one image exactly as the model's validation transform: CHW float32."""
    img = load_image(source, limits, min_short_side=config.resize_size, budget=budget)
    img = resize_center_crop(img, config.resize_size, config.input_size, config.interpolation)
    return normalize(img, config.mean, config.std)
