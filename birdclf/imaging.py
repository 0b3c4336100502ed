"""Decode an uploaded image safely and apply the model's validation transform, with Pillow and numpy."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import ModelConfig
from .constants import ALLOWED_FORMATS, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ENV_MAX_BYTES, ENV_MAX_PIXELS
from .errors import EmptyImageError, ImageTooLargeError, InvalidImageError

__all__ = ["ImageSource", "ImageLimits", "load_image", "resize_center_crop", "normalize", "preprocess"]

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike, Image.Image]

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageLimits:
    """Byte and pixel limits for untrusted images (defaults from env vars)."""

    def __init__(self, max_bytes: int | None = None, max_pixels: int | None = None) -> None:
        self.max_bytes = int(max_bytes or os.environ.get(ENV_MAX_BYTES) or DEFAULT_MAX_BYTES)
        self.max_pixels = int(max_pixels or os.environ.get(ENV_MAX_PIXELS) or DEFAULT_MAX_PIXELS)

    def __repr__(self) -> str:
        return f"ImageLimits(max_bytes={self.max_bytes}, max_pixels={self.max_pixels})"


def _read_bytes(source: ImageSource, limits: ImageLimits) -> bytes:
    """Get the raw bytes of a path or buffer, enforcing the byte limit."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"no such image file: {path}")
        if path.stat().st_size > limits.max_bytes:
            raise ImageTooLargeError(
                f"{path.name} is {path.stat().st_size} bytes, over the {limits.max_bytes}-byte limit")
        data = path.read_bytes()
    else:
        data = bytes(source)
    if not data:
        raise EmptyImageError("empty image: zero bytes received")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    return data


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent areas become white, not black."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        img = Image.fromarray((arr / top * 255.0).clip(0, 255).astype(np.uint8))
    return img.convert("RGB")


def load_image(source: ImageSource, limits: ImageLimits | None = None) -> Image.Image:
    """Decode an image (JPEG, PNG, WebP, GIF first frame, ...) to RGB with EXIF orientation applied."""
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source) or source)
    limits = limits or ImageLimits()
    data = _read_bytes(source, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = img.size
            if width * height > limits.max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels, over the {limits.max_pixels}-pixel limit")
            img.seek(0)  # first frame of animations
            img.load()
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"not a readable image (supported: {', '.join(ALLOWED_FORMATS)})") from exc
    except Exception as exc:  # Pillow raises many types on malformed files (OSError, SyntaxError, struct.error, ...)
        raise InvalidImageError(f"corrupt or truncated image: {exc}") from exc
    if min(img.size) < 1:
        raise InvalidImageError(f"image has no pixels ({img.size[0]}x{img.size[1]})")
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block must not lose an otherwise good photo
        pass
    return _to_rgb(img)


def resize_center_crop(img: Image.Image, resize_size: int, crop_size: int,
                       interpolation: str = "bicubic") -> Image.Image:
    """Resize the shorter side to `resize_size`, then centre-crop a square (torchvision Resize + CenterCrop)."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize_size, int(resize_size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), _RESAMPLE[interpolation])
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    return img.crop((left, top, left + crop_size, top + crop_size))


def normalize(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """RGB image to a float32 CHW array, scaled to [0, 1] then normalised."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(source: ImageSource, config: ModelConfig, limits: ImageLimits | None = None) -> np.ndarray:
    """Decode and transform one image exactly as the model's validation transform did: CHW float32."""
    img = load_image(source, limits)
    img = resize_center_crop(img, config.resize_size, config.input_size, config.interpolation)
    return normalize(img, config.mean, config.std)
