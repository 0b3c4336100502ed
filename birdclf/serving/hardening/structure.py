"""Cheap walks over an image file's structure before Pillow decodes it: what the decoders will really hold
(JPEG coefficient buffers, TIFF tile buffers) and refusal of parse bombs (thousands of JPEG scans or markers, PNG
chunks, GIF blocks, RLE bitmaps that Pillow expands in Python). Each walk stops at its cap, so it costs little."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from PIL import Image

from ...errors import ImageTooLargeError, InvalidImageError

__all__ = ["FileFacts", "precheck", "tiff_buffer_bytes", "MAX_JPEG_SCANS", "MAX_JPEG_SEGMENTS", "MAX_PNG_CHUNKS",
           "MAX_GIF_BLOCKS"]

MAX_JPEG_SCANS = 64  # libjpeg's progressive scripts use about 10; each scan is a pass over every coefficient
MAX_JPEG_SEGMENTS = 1024  # markers (APPn, COM, DQT, DHT...) before the image ends
MAX_PNG_CHUNKS = 10_000  # a 20 MB PNG in libpng's 8 KB IDAT chunks has 2,560
MAX_GIF_BLOCKS = 10_000  # extension sub-blocks before the first frame (2.5 MB of comments and the like)
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # the marker after a scan's entropy-coded data
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class FileFacts:
    """What the walk learnt: whether a JPEG makes libjpeg keep every DCT coefficient, and its scans."""

    buffered_jpeg: bool = False  # several scans (progressive, or one scan per component)
    scans: int = 0


def precheck(data: bytes) -> FileFacts:
    """Walk the file's structure, found by its magic bytes, before Pillow parses any of it (Pillow reads JPEG
    markers, PNG chunks and GIF blocks one by one in Python when it opens a file); raise for parse bombs."""
    for magic, walk in _WALKS:
        if data.startswith(magic):
            return walk(data)
    return FileFacts()  # formats Pillow opens in C (WebP, TIFF) have nothing to walk


def _jpeg(data: bytes) -> FileFacts:
    """Count a JPEG's marker segments and scans (SOS) up to its end (EOI), skipping entropy-coded data."""
    pos, segments, scans, components, partial = 2, 0, 0, 0, False
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:  # garbage between segments: libjpeg skips it to the next marker, and so do we
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI: the first image is complete (MPO and trailing data are not walked)
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageTooLargeError(f"JPEG has over {MAX_JPEG_SEGMENTS} marker segments: refused as a parse bomb")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF and pos + 10 <= end:
            components = data[pos + 9]
        if marker == 0xDA:  # SOS: then entropy-coded data up to the next real marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageTooLargeError(f"JPEG has over {MAX_JPEG_SCANS} scans: refused (each costs a pass over "
                                         "the whole image)")
            partial = partial or (pos + 5 <= end and data[pos + 4] < components)  # one component per scan
            found = _ENTROPY_END.search(data, pos + 2 + length)
            if found is None:
                break
            pos = found.start()
            continue
        pos += 2 + length
    # several scans, or one scan of fewer components than the frame: libjpeg keeps every coefficient
    return FileFacts(buffered_jpeg=scans > 1 or partial, scans=scans)


def _png(data: bytes) -> FileFacts:
    """Count a PNG's chunks (each is parsed in Python by Pillow)."""
    pos, chunks, end = 8, 0, len(data)
    while pos + 8 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageTooLargeError(f"PNG has over {MAX_PNG_CHUNKS} chunks: refused as a parse bomb")
        if data[pos + 4:pos + 8] == b"IEND":
            break
        pos += 12 + length
    return FileFacts()


def _gif(data: bytes) -> FileFacts:
    """Count a GIF's extension sub-blocks before its first frame (Pillow reads them one by one in Python)."""
    if len(data) < 13:
        return FileFacts()
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    blocks, end = 0, len(data)
    while pos < end and data[pos] == 0x21:  # extension: label, then sub-blocks until a zero size
        pos += 2
        while pos < end:
            size = data[pos]
            pos += 1
            if size == 0:
                break
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise ImageTooLargeError(f"GIF has over {MAX_GIF_BLOCKS} extension blocks before its first "
                                         "frame: refused as a parse bomb")
            pos += size
    return FileFacts()


def _bmp(data: bytes) -> FileFacts:
    """Refuse RLE-compressed bitmaps (compression 1 or 2 in a 40-byte or larger header)."""
    if len(data) >= 34 and struct.unpack_from("<I", data, 14)[0] >= 40 and struct.unpack_from("<I", data, 30)[0] \
            in (1, 2):
        raise InvalidImageError("RLE-compressed BMP files are not read here (they are expanded pixel by pixel); "
                                "send a PNG or JPEG")
    return FileFacts()


_WALKS = ((b"\xff\xd8\xff", _jpeg), (b"\x89PNG\r\n\x1a\n", _png), (b"GIF87a", _gif), (b"GIF89a", _gif),
          (b"BM", _bmp))  # magic bytes -> the walk for that format


def tiff_buffer_bytes(img: Image.Image) -> int:
    """Bytes libtiff allocates for one tile or strip of an opened TIFF: a 16x16 image may declare one 26752x26752
    tile (2 GB)."""
    tags = getattr(img, "tag_v2", {})
    width, height = img.size
    bits = tags.get(258) or (8,)
    bits_per_pixel = sum(bits) if isinstance(bits, tuple) else int(bits) * int(tags.get(277) or 1)
    tile_w, tile_h = tags.get(322), tags.get(323)
    if tile_w and tile_h:
        return int(tile_w) * int(tile_h) * bits_per_pixel // 8
    rows = min(int(tags.get(278) or height), height)
    return width * rows * bits_per_pixel // 8
