"""Decoding untrusted images and the validation transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from birdclf.constants import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from birdclf.data.layout import list_images
from birdclf.errors import EmptyImageError, ImageTooLargeError, InvalidImageError
from birdclf.formats import FORMATS_IN_WORDS, IMAGE_FORMATS
from birdclf.serving.imaging import ImageLimits, load_image, normalize, resize_center_crop
from birdclf.settings import Settings
from tests.conftest import make_image


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("PNG", "RGB"), ("WEBP", "RGB"), ("BMP", "RGB"),
                                      ("PNG", "L"), ("PNG", "P"), ("TIFF", "RGB"), ("JPEG", "L")])
def test_formats_decode_to_rgb(fmt, mode):
    img = load_image(make_image(40, 30, fmt=fmt, mode=mode))
    assert img.mode == "RGB" and img.size == (40, 30)


@pytest.mark.parametrize("fmt", IMAGE_FORMATS, ids=lambda f: f.pillow)
def test_each_row_of_the_format_table_is_read_found_in_data_folders_and_named(tmp_path, fmt):
    """One row of birdclf.formats makes a format decode, its files count in a data folder, and the page name it."""
    data = make_image(40, 30, fmt=fmt.pillow)
    assert load_image(data).size == (40, 30)
    for ext in fmt.extensions:
        (tmp_path / f"photo{ext.upper()}").write_bytes(data)
    assert len(list_images(tmp_path)) == len(fmt.extensions)
    assert fmt.label in FORMATS_IN_WORDS and all(media.startswith("image/") for media in fmt.media_types)


def test_a_format_outside_the_table_is_refused_naming_the_ones_read():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "PCX")  # Pillow reads PCX, but it is not in the table
    with pytest.raises(InvalidImageError, match="supported: JPEG, PNG, WebP"):
        load_image(buf.getvalue())


def test_transparent_png_becomes_white_not_black():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert np.asarray(load_image(buf.getvalue())).min() == 255


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, b = np.asarray(load_image(buf.getvalue())).reshape(-1, 3).mean(0)
    assert r > 200 and b < 50


def test_16bit_png_is_scaled_not_clipped():
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    out = np.asarray(load_image(buf.getvalue()))
    assert out.max() == 255 and out.min() == 0


def test_exif_orientation_is_applied():
    img = Image.open(io.BytesIO(make_image(60, 20)))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert load_image(buf.getvalue()).size == (20, 60)


def test_path_input(tmp_path):
    path = tmp_path / "bird.jpg"
    path.write_bytes(make_image())
    assert load_image(path).size == (64, 48)
    assert load_image(str(path)).size == (64, 48)


@pytest.mark.parametrize("data,error,words", [
    (b"", EmptyImageError, "empty"),
    (b"hello, not an image", InvalidImageError, "not a readable image"),
    (b"%PDF-1.4 fake", InvalidImageError, "not a readable image"),
])
def test_bad_bytes_raise_clear_errors(data, error, words):
    with pytest.raises(error, match=words):
        load_image(data)


def test_truncated_jpeg():
    data = make_image(200, 200, quality=95)
    with pytest.raises(InvalidImageError, match="truncated|corrupt"):
        load_image(data[: len(data) // 2])


def test_missing_file(tmp_path):
    with pytest.raises(InvalidImageError, match="no such image"):
        load_image(tmp_path / "nope.jpg")


def test_byte_limit():
    with pytest.raises(ImageTooLargeError, match="byte"):
        load_image(make_image(64, 64, fmt="PNG"), ImageLimits(max_bytes=100))


def test_pixel_limit_stops_decompression_bombs_before_decoding():
    buf = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buf, "PNG")  # ~36 Mpx in a few KB
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(ImageTooLargeError, match="pixel"):
        load_image(buf.getvalue(), ImageLimits(max_pixels=1_000_000))


def test_limits_from_environment(monkeypatch):
    monkeypatch.setenv("BIRDCLF_MAX_BYTES", "123")
    monkeypatch.setenv("BIRDCLF_MAX_PIXELS", "456K")
    limits = ImageLimits.from_settings(Settings.from_env())
    assert (limits.max_bytes, limits.max_pixels) == (123, 456_000)
    assert ImageLimits() == ImageLimits(DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS)  # no hidden read of the environment


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (256, 256), (517, 301), (50, 40)])
@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
def test_resize_center_crop_matches_torchvision(size, interp):
    transforms = pytest.importorskip("torchvision.transforms")
    img = load_image(make_image(*size, fmt="PNG", seed=3))
    mode = {"bicubic": transforms.InterpolationMode.BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR}
    ref = transforms.Compose([transforms.Resize(256, interpolation=mode[interp]), transforms.CenterCrop(224)])(img)
    ours = resize_center_crop(img, 256, 224, interp)
    assert ours.size == (224, 224)
    assert np.array_equal(np.asarray(ours), np.asarray(ref))


def test_normalize_layout_and_values():
    img = Image.new("RGB", (4, 4), (255, 0, 128))
    arr = normalize(img, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert arr.shape == (3, 4, 4) and arr.dtype == np.float32
    assert np.allclose(arr[0], 1.0) and np.allclose(arr[1], -1.0) and np.allclose(arr[2], 128 / 255 * 2 - 1, atol=1e-6)
