"""The image formats birdclf reads: one table, from which the decoder's allow-list, the data folders' file
extensions, the API's documented media types and the page's wording all come. Adding a format is one row."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageFormat", "IMAGE_FORMATS", "PILLOW_FORMATS", "FILE_EXTENSIONS", "MEDIA_TYPES", "FORMATS_IN_WORDS"]


@dataclass(frozen=True)
class ImageFormat:
    """One readable format: Pillow's name for it, how people name it, its file extensions and its media types."""

    pillow: str
    label: str
    extensions: tuple[str, ...]
    media_types: tuple[str, ...]


IMAGE_FORMATS = (
    ImageFormat("JPEG", "JPEG", (".jpg", ".jpeg"), ("image/jpeg",)),  # Pillow's JPEG plugin also opens MPO files
    ImageFormat("PNG", "PNG", (".png",), ("image/png",)),
    ImageFormat("WEBP", "WebP", (".webp",), ("image/webp",)),
    ImageFormat("GIF", "GIF", (".gif",), ("image/gif",)),  # the first frame
    ImageFormat("BMP", "BMP", (".bmp",), ("image/bmp",)),
    ImageFormat("TIFF", "TIFF", (".tif", ".tiff"), ("image/tiff",)),
)

PILLOW_FORMATS = tuple(f.pillow for f in IMAGE_FORMATS)  # Image.open(..., formats=PILLOW_FORMATS): nothing else
FILE_EXTENSIONS = tuple(ext for f in IMAGE_FORMATS for ext in f.extensions)
MEDIA_TYPES = tuple(media for f in IMAGE_FORMATS for media in f.media_types)
FORMATS_IN_WORDS = ", ".join(f.label for f in IMAGE_FORMATS[:-1]) + f" or {IMAGE_FORMATS[-1].label}"
