"""Phone photos made small in the web app's kernel before they are sent (Pillow only, no numpy): a big JPEG is
decoded at reduced size, EXIF rotation is applied, transparency goes white, and ~2 Mpx of JPEG is what travels."""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from ..formats import FORMATS_IN_WORDS, PILLOW_FORMATS

__all__ = ["FORMATS_TEXT", "SEND_PIXELS", "PhotoError", "Photo", "prepare_photo", "boxed_thumbnail", "is_heic"]

FORMATS_TEXT = FORMATS_IN_WORDS  # "JPEG, PNG, WebP, GIF, BMP or TIFF", from the format table
SEND_PIXELS = 2_000_000  # what the API receives per photo: plenty for a 224-300 px model input
THUMB_SIDE = 640  # the photo shown on the page
MAX_PIXELS = 100_000_000  # refuse decompression bombs before decoding


class PhotoError(Exception):
    """A photo that cannot be used, with words for the visitor."""


@dataclass
class Photo:
    """An upload ready to send: a JPEG of at most SEND_PIXELS and a data URI to show."""

    name: str
    jpeg: bytes
    thumbnail_uri: str
    original_bytes: int
    original_size: tuple[int, int]
    sent_size: tuple[int, int] = (0, 0)  # the JPEG sent to the API: the answer's box is in its pixels


def is_heic(data: bytes) -> bool:
    """HEIC/HEIF (iPhone camera default): an ISO media file with a heic/heix/mif1 brand."""
    return len(data) > 12 and data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1")


def _encode(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def prepare_photo(name: str, data: bytes) -> Photo:
    """Decode an upload (bounded memory), fix its orientation, shrink it to SEND_PIXELS, make its thumbnail."""
    if not data:
        raise PhotoError(f"{name} is empty. Please choose the photo again.")
    if is_heic(data):
        raise PhotoError(f"{name} is a HEIC photo, which this page cannot read. On an iPhone, choose the photo "
                         f"from the photo library (it is then sent as JPEG), or export it as JPEG; accepted: "
                         f"{FORMATS_TEXT}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise PhotoError(f"{name} has {width}x{height} pixels, more than this page can open. Please "
                                 "choose a smaller photo.")
            scale = (SEND_PIXELS / (width * height)) ** 0.5
            if scale < 1 and img.format in ("JPEG", "MPO"):
                img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            img.seek(0)
            img = ImageOps.exif_transpose(img) or img
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = img.convert("RGB")
            if img.width * img.height > SEND_PIXELS:
                ratio = (SEND_PIXELS / (img.width * img.height)) ** 0.5
                img = img.resize((max(1, int(img.width * ratio)), max(1, int(img.height * ratio))),
                                 Image.Resampling.LANCZOS)
    except PhotoError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PhotoError(f"{name} is not a photo this page can read. Please upload a {FORMATS_TEXT} "
                         "image.") from None
    except Exception:  # Pillow raises many types on malformed files
        raise PhotoError(f"{name} could not be read: the file looks damaged or incomplete. Please try another "
                         "copy of the photo.") from None
    thumb = img.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    uri = "data:image/jpeg;base64," + base64.b64encode(_encode(thumb, 82)).decode()
    return Photo(name, _encode(img, 90), uri, len(data), (width, height), img.size)


def boxed_thumbnail(photo: Photo, box: object) -> str:
    """The photo's thumbnail with the answer's box ([x, y, width, height] in the sent photo's pixels) drawn on
    it; the plain thumbnail when there is no usable box."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            and min(photo.sent_size) > 0):
        return photo.thumbnail_uri
    from PIL import ImageDraw

    thumb = Image.open(io.BytesIO(base64.b64decode(photo.thumbnail_uri.split(",", 1)[1]))).convert("RGB")
    sx, sy = thumb.width / photo.sent_size[0], thumb.height / photo.sent_size[1]
    x, y, w, h = (float(v) for v in box)
    line = max(3, min(thumb.size) // 90)
    draw = ImageDraw.Draw(thumb)
    corners = (x * sx, y * sy, (x + w) * sx, (y + h) * sy)
    draw.rectangle(corners, outline=(255, 255, 255), width=line + 2)  # a light edge, then the colour: seen on any photo
    draw.rectangle(corners, outline=(255, 196, 0), width=line)
    return "data:image/jpeg;base64," + base64.b64encode(_encode(thumb, 82)).decode()
