"""The find stage on distant and off-centre birds: cub50 test photos pasted into non-bird scenes (seeded).

Sets: the original photos; the photos pasted at 30% and at 15% of a scene's width (scenes: ../shared/data/nonbird
without bird_like, brought to 1024 px wide, by `birdclf.data.scenes`); the non-bird photos themselves. Each set is
answered twice by the same model in the same run: the whole photo only (as before the find stage, BIRDCLF_FIND=0)
and with the find stage. Box hit: the box's centre lies inside the pasted bird photo.

    python -m bench.find --model runs/RUN/model.onnx [--limit 500] [--params JSON]   # table + bench/results/find.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SHARED, machine, print_table, write_json
from birdclf.data.scenes import paste_into_scenes, read_scene_index
from birdclf.serving.predictor import Predictor
from birdclf.settings import Settings

FRACTIONS = (0.3, 0.15)
TARGETS = {"0.3": {"top1": 0.80, "not_a_bird_max": 0.05}, "0.15": {"top1": 0.60}, "original": {"top1_drop_max": 0.005},
           "nonbird": {"is_bird_max": 0.01}}


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def build_sets(data: Path, nonbird: Path, out: Path, limit: int | None, seed: int) -> dict[str, list[tuple[Path, Any]]]:
    """{set name: [(photo, truth)]}: truth is (label, box) for birds, None for non-birds."""
    tests = _photos(data / "test")
    random.Random(seed).shuffle(tests)
    tests = tests[:limit] if limit else tests
    birds = [(p, p.parent.name) for p in tests]
    scenes = [p for p in _photos(nonbird) if "bird_like" not in p.parts]
    sets: dict[str, list[tuple[Path, Any]]] = {"original": [(p, (label, None)) for p, label in birds]}
    for fraction in FRACTIONS:
        folder = out / f"scenes-{fraction}-seed{seed}-n{len(birds)}"
        if not (folder / "index.csv").exists():
            paste_into_scenes(birds, scenes, folder, fraction, seed=seed + int(fraction * 100))
        sets[str(fraction)] = [(folder / r.file, (r.label, (r.x, r.y, r.width, r.height)))
                               for r in read_scene_index(folder)]
    sets["nonbird"] = [(p, None) for p in scenes]
    return sets


def score(predictor: Predictor, items: list[tuple[Path, Any]]) -> dict[str, Any]:
    """Answer every photo one at a time (as the API does for one photo a request) and sum up."""
    started = time.perf_counter()
    preds = [predictor.predict(path) for path, _ in items]
    seconds = time.perf_counter() - started
    row: dict[str, Any] = {"photos": len(items), "ms_per_photo": 1000 * seconds / len(items),
                           "is_bird": float(np.mean([bool(p.is_bird) for p in preds]))}
    if items[0][1] is None:
        return row
    right = np.array([p.label == truth[0] for p, (_, truth) in zip(preds, items)])
    species = np.array([p.verdict == "species" for p in preds])
    row |= {"top1": float(right.mean()), "not_a_bird": float(np.mean([p.verdict == "not_a_bird" for p in preds])),
            "species": float(species.mean()),
            "species_precision": float(right[species].mean()) if species.any() else None}
    boxes = [(p.box, truth[1]) for p, (_, truth) in zip(preds, items) if truth[1] is not None]
    if boxes:
        row["box_hit"] = float(np.mean([b is not None and t[0] <= b[0] + b[2] / 2 <= t[0] + t[2]
                                        and t[1] <= b[1] + b[3] / 2 <= t[1] + t[3] for b, t in boxes]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a birdclf ONNX model (trained on cub50's species)")
    parser.add_argument("--data", type=Path, default=SHARED / "cub50")
    parser.add_argument("--nonbird", type=Path, default=SHARED / "nonbird")
    parser.add_argument("--limit", type=int, default=None, help="at most N test photos (seeded draw)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "birdclf-bench-scenes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--params", type=json.loads, default=None, metavar="JSON",
                        help='find-stage parameters over the defaults, e.g. \'{"tile": 0.5, "search_top": 1}\'')
    args = parser.parse_args()
    sets = build_sets(args.data, args.nonbird, args.cache, args.limit, args.seed)
    rows = []
    for find in (False, True):
        predictor = Predictor(args.model, threads=args.threads, settings=Settings(find=find))
        if find and args.params:
            predictor.find_params = replace(predictor.find_params, **args.params)
        for name, items in sets.items():
            rows.append({"set": name, "find": find} | score(predictor, items))
            print(f"{name} find={find}: done", flush=True)
    print_table(rows, ["set", "find", "photos", "top1", "not_a_bird", "species", "species_precision", "is_bird",
                       "box_hit", "ms_per_photo"])
    write_json("find", {"machine": machine(), "model": str(args.model), "limit": args.limit, "seed": args.seed,
                        "params": args.params, "targets": TARGETS, "rows": rows})


if __name__ == "__main__":
    main()
