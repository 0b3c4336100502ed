"""Distant views of training photos for the cached-feature head: each photo shrunk and cropped the way the find
stage's closer look shows a far bird (a low-resolution square around it, a little off-centre, wider or tighter
than the photo), so that the head names a bird in a crop as surely as in a tight close-up."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

__all__ = ["DISTANT_WIDTH", "DISTANT_CROP", "distant_view", "write_distant_views"]

VERSION = 1  # in each view's file name: a change of the recipe renders new files
DISTANT_WIDTH = (110, 320)  # the photo's width in pixels: 11-31% of a 1024 px wide scene (bench.find's 15%, 30%)
DISTANT_CROP = (0.75, 1.35)  # the crop's side as a share of the shrunk photo's longer side (map boxes vary)
SHIFT = 0.15  # the photo's centre moves up to this share of the crop's side from the crop's centre


def distant_view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One distant view of a photo: shrunk to a width drawn from DISTANT_WIDTH, on a square crop whose side is
    drawn from DISTANT_CROP; where the crop is wider than the photo, the photo's own blurred surroundings fill it."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    width = float(rng.uniform(*DISTANT_WIDTH))
    scale = min(1.0, width / image.width)
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    side = max(16, round(max(small.size) * float(rng.uniform(*DISTANT_CROP))))
    fill = small.resize((max(1, side // 8),) * 2, Image.BILINEAR).filter(ImageFilter.GaussianBlur(1))
    canvas = fill.resize((side, side), Image.BILINEAR)
    dx, dy = (rng.uniform(-SHIFT, SHIFT, size=2) * side).round().astype(int)
    canvas.paste(small, ((side - small.width) // 2 + int(dx), (side - small.height) // 2 + int(dy)))
    return canvas


def write_distant_views(paths: list[Path], out_dir: str | os.PathLike, count: int, seed: int = 0) -> list[Path]:
    """`count` distant views of each photo as JPEG files in `out_dir` (kept: a rerun with the same photos, seed and
    recipe reuses them), view-major: all photos' first views, then all their second views, ..."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    views: list[list[Path]] = [[] for _ in range(count)]
    for path in paths:
        st = os.stat(path)
        key = hashlib.sha256(f"{VERSION}|{seed}|{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
        names = [out_dir / f"{key}-{k}.jpg" for k in range(count)]
        if not all(n.exists() for n in names):
            rng = np.random.default_rng(int(key, 16))
            with Image.open(path) as image:
                for name in names:
                    distant_view(image, rng).save(name, quality=90)
        for k, name in enumerate(names):
            views[k].append(name)
    return [p for view in views for p in view]
