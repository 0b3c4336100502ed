"""Distant birds for measuring the find stage: bird photos shrunk into photos of other scenes, at a random place.

A phone shows a bird across the garden as a small part of the frame; the Kaggle and CUB photos are close-ups. This
pastes each bird photo, `fraction` of the scene's width, into a scene photo with no bird (seeded), and writes
`<out>/<label>/<n>.jpg` plus `index.csv` with the bird's box in the scene's pixels.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["SCENE_WIDTH", "PastedBird", "paste_into_scenes", "read_scene_index"]

SCENE_WIDTH = 1024  # scenes are brought to this width (a phone photo as the API decodes it, about)
INDEX = "index.csv"


@dataclass(frozen=True)
class PastedBird:
    """One generated photo: which bird photo went where into which scene."""

    file: str  # relative to the output folder
    label: str
    x: int
    y: int
    width: int
    height: int
    bird: str
    scene: str


def _rgb(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as img:
        return (ImageOps.exif_transpose(img) or img).convert("RGB")


def paste_into_scenes(birds: Sequence[tuple[str | os.PathLike, str]], scenes: Sequence[str | os.PathLike],
                      out: str | os.PathLike, fraction: float, seed: int = 0,
                      scene_width: int = SCENE_WIDTH) -> list[PastedBird]:
    """Paste each (bird photo, label) into a scene drawn at random, `fraction` of its width, at a random place."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not birds or not scenes:
        raise ValueError("need at least one bird photo and one scene photo")
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for n, (bird_path, label) in enumerate(birds):
        scene_path = scenes[int(rng.integers(len(scenes)))]
        scene = _rgb(scene_path)
        scene = scene.resize((scene_width, max(1, round(scene.height * scene_width / scene.width))),
                             Image.Resampling.LANCZOS)
        bird = _rgb(bird_path)
        width = max(1, round(fraction * scene.width))
        height = max(1, round(width * bird.height / bird.width))
        if height > scene.height:  # a tall bird photo in a wide scene: as tall as the scene
            width, height = max(1, round(width * scene.height / height)), scene.height
        bird = bird.resize((width, height), Image.Resampling.LANCZOS)
        x = int(rng.integers(0, scene.width - width + 1))
        y = int(rng.integers(0, scene.height - height + 1))
        scene.paste(bird, (x, y))
        target = out / label / f"{n:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        scene.save(target, quality=92)
        rows.append(PastedBird(target.relative_to(out).as_posix(), label, x, y, width, height,
                               Path(bird_path).name, Path(scene_path).name))
    with open(out / INDEX, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(PastedBird.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return rows


def read_scene_index(folder: str | os.PathLike) -> list[PastedBird]:
    """The rows `paste_into_scenes` wrote into `folder`."""
    with open(Path(folder) / INDEX, newline="", encoding="utf-8") as f:
        return [PastedBird(**{k: int(v) if k in ("x", "y", "width", "height") else v for k, v in row.items()})
                for row in csv.DictReader(f)]
