"""Parse bombs are refused before Pillow parses them, and decoders' hidden buffers are counted (the structure
walks of birdclf.serving.hardening.structure, through the real decoding path)."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image

from birdclf.errors import ImageTooLargeError, InvalidImageError
from birdclf.serving.hardening import DecodeBudget, decode_cost
from birdclf.serving.hardening.structure import (
    MAX_GIF_BLOCKS,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_CHUNKS,
    precheck,
)
from birdclf.serving.imaging import ImageLimits, load_image

LIMITS = ImageLimits(max_bytes=50_000_000, max_pixels=60_000_000)


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def photo(size=(64, 48)) -> Image.Image:
    return Image.linear_gradient("L").resize(size).convert("RGB")


def decode(data: bytes, capacity: int = 256 << 20):
    return load_image(data, LIMITS, min_short_side=256, budget=DecodeBudget(capacity))


def test_ordinary_files_pass_and_progressive_jpeg_is_known_to_buffer():
    baseline, progressive = encoded(photo(), "JPEG"), encoded(photo(), "JPEG", progressive=True)
    assert not precheck(baseline).buffered_jpeg and precheck(baseline).scans == 1
    assert precheck(progressive).buffered_jpeg and precheck(progressive).scans > 1
    for data in (baseline, progressive, encoded(photo(), "PNG"), encoded(photo(), "GIF"), encoded(photo(), "BMP")):
        assert decode(data).size == (64, 48)


def test_jpeg_marker_and_scan_bombs():
    data = encoded(photo(), "JPEG")
    comments = b"\xff\xfe\x00\x02" * (MAX_JPEG_SEGMENTS + 1)  # empty COM segments: each parsed in Python
    with pytest.raises(ImageTooLargeError, match="marker segments"):
        decode(data[:2] + comments + data[2:])
    progressive = encoded(photo(), "JPEG", progressive=True)
    last_scan = progressive.rindex(b"\xff\xda")
    scans = progressive[last_scan:-2] * MAX_JPEG_SCANS  # the last scan again and again: a pass over it each
    started = time.monotonic()
    with pytest.raises(ImageTooLargeError, match="scans"):
        decode(progressive[:last_scan] + scans + progressive[-2:])
    assert time.monotonic() - started < 1
    garbage = progressive[:last_scan] + b"\x00" * 100 + scans + progressive[-2:]  # libjpeg skips the garbage
    with pytest.raises(ImageTooLargeError, match="scans"):
        decode(garbage)


def test_a_baseline_jpeg_with_several_scans_is_counted_like_a_progressive_one():
    """libjpeg keeps every coefficient for a sequential file with one scan per component, whatever its draft
    size: the budget must count that, not the reduced output."""
    big = encoded(photo((4000, 4000)), "JPEG")
    first_scan = big.index(b"\xff\xda")
    twice = big[:-2] + big[first_scan:-2] + big[-2:]
    img = Image.open(io.BytesIO(twice))
    img.draft("RGB", (500, 500))
    assert precheck(twice).scans == 2
    assert decode_cost(img, (4000, 4000), precheck(twice)) > 40e6 > decode_cost(img, (4000, 4000), precheck(big))


def test_png_chunk_and_gif_block_bombs():
    png = encoded(photo(), "PNG")
    chunk = struct.pack(">I", 0) + b"zzZz" + struct.pack(">I", zlib.crc32(b"zzZz"))  # empty private chunks
    with pytest.raises(ImageTooLargeError, match="chunks"):
        decode(png[:33] + chunk * (MAX_PNG_CHUNKS + 1) + png[33:])
    gif = encoded(photo(), "GIF")
    flags = gif[10]
    start = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    comment = b"\x21\xfe" + b"\x01x" * (MAX_GIF_BLOCKS + 1) + b"\x00"  # one comment of many 1-byte sub-blocks
    with pytest.raises(ImageTooLargeError, match="extension blocks"):
        decode(gif[:start] + comment + gif[start:])


def test_rle_bitmaps_are_refused():
    width = height = 64
    rows = (bytes([1, 7]) * width + b"\x00\x00") * height + b"\x00\x01"  # one-pixel runs: expanded in Python
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    bmp = (b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
           + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0) + palette + rows)
    with pytest.raises(InvalidImageError, match="RLE"):
        decode(bmp)


def tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """A deflate RGB TIFF of `width` x `height` pixels made of one `tile` x `tile` tile."""
    data = zlib.compress(bytes(tile * tile * 3))
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, 0), (259, 3, 1, 8), (262, 3, 1, 2),
               (277, 3, 1, 3), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, 0), (325, 4, 1, len(data))]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at, data_at = 8 + ifd_size, 8 + ifd_size + 6
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_at, 324: data_at}.get(tag, value)
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                         else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + struct.pack("<HHH", 8, 8, 8) + data


def test_tiff_tile_buffers_are_counted():
    """A 16x16 TIFF may declare one 16384x16384 tile, which libtiff allocates (768 MB) and fills."""
    with pytest.raises(ImageTooLargeError, match="decode budget"):
        decode(tiled_tiff(16, 16, 16384))
    assert decode(tiled_tiff(16, 16, 16)).size == (16, 16)
