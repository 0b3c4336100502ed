"""Unknown species: trained on 40 of cub50's 50 species, how many photos of the other 10 are held back (`unsure`)
while the 40 known keep their `species` answers? The lite0 head on cached features (`--fast-head --epochs 0`), the
threshold from out-of-fold calibration (Wilson bound, 97%), and each way of scoring "is this one of mine?":

- "max-softmax" (today): the calibrated top-1 probability alone.
- "knn": also the cosine distance of the photo's features to its k-th nearest known training photo (Sun et al.
  2022, "Out-of-distribution detection with deep nearest neighbors"); a photo farther than `pass` of the known
  photos (leave-one-out) is `unsure`.
- "mahalanobis": the distance to the nearest known class mean under a shared, shrunk covariance (Lee et al. 2018),
  on the same pass rule.
- "other-bird class" (outlier exposure, Hendrycks et al. 2019), what `birdclf train --other-birds` ships: the head
  gets one more class, trained on photos of species outside cub50 (kaggle525-sample's, names not in cub50); a photo
  whose top-1 is that class, or whose P(other) is above what `pass` of the known photos (out-of-fold) reach, is held
  back. Calibrated out-of-fold on the known photos the head does not send to "other". The shipped rule: pass 80%
  (OTHER_BIRD_PASS).

Everything that sets a threshold sees only the 40 known species; the 10 unknown species' test photos only score.

Run: GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295 \
     .venv/bin/python -m bench.open_set [--seeds 3]
Prints the table (median and range over seeds) and writes bench/results/open_set.json.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.calibration import features
from bench.common import SHARED, machine, print_table, write_json
from birdclf.training.calibration import OOF_BOUND, OOF_TARGET_PRECISION, calibrate, held_back, softmax
from birdclf.training.features import (
    CachedFeatures,
    HeadFit,
    head_logits,
    out_of_fold_logits,
    train_head,
)
from birdclf.training.other_birds import widen_head

UNKNOWN = 10
PASS_RATES = (0.95, 0.90, 0.85, 0.80)  # share of known photos (leave-one-out) an extra score lets through


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def knn_distance(bank: np.ndarray, query: np.ndarray, k: int, skip_self: bool = False) -> np.ndarray:
    """Cosine distance of each query row to its k-th nearest bank row (skipping the row itself when the query is
    the bank)."""
    sims = _unit(query) @ _unit(bank).T
    if skip_self:
        np.fill_diagonal(sims, -np.inf)
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    return 1.0 - kth


def mahalanobis_distance(x: np.ndarray, y: np.ndarray, query: np.ndarray, dims: int = 128) -> np.ndarray:
    """Distance to the nearest class mean under a shared Ledoit-Wolf covariance, in the top `dims` principal
    directions of the known features."""
    from sklearn.covariance import LedoitWolf

    centre = x.mean(0)
    _, _, vt = np.linalg.svd(x - centre, full_matrices=False)
    project = vt[:dims].T
    xp, qp = (x - centre) @ project, (query - centre) @ project
    classes = np.unique(y)
    means = np.stack([xp[y == c].mean(0) for c in classes])
    precision = LedoitWolf().fit(xp - means[np.searchsorted(classes, y)]).precision_
    diffs = qp[:, None, :] - means[None]
    return np.sqrt(np.einsum("qcd,de,qce->qc", diffs, precision, diffs).min(1))


def other_birds(data: Path) -> list[Path]:
    """kaggle525-sample photos of the species whose names are not among `data`'s training species."""
    if not (SHARED / "kaggle525-sample").is_dir():
        return []
    known = {d.name.lower().replace("_", " ") for d in (data / "train").iterdir()}
    folders = [d for d in sorted((SHARED / "kaggle525-sample" / "valid").iterdir())
               if d.is_dir() and " ".join(d.name.lower().split()) not in known]
    return [p for d in folders for p in sorted(d.glob("*.jpg"))]


def species_head(head: Any, classes: int) -> Any:
    """A copy of the fastai head with `classes` outputs (the first rows of its last Linear)."""
    from torch import nn

    out = copy.deepcopy(head)
    last = out[-1]
    out[-1] = nn.Linear(last.in_features, classes, bias=last.bias is not None)
    out[-1].weight.data.copy_(last.weight.data[:classes])
    return out


def with_other_class(f: dict, other: np.ndarray, known: np.ndarray, seed: int) -> list[dict]:
    """`birdclf train --other-birds`' recipe: the known species' head widened by an "other bird" class
    (`widen_head`) trained on `other` too, calibrated out of fold (`calibrate(..., other_pass=)`); rows per pass
    rate, each scored with the serving rule (`held_back`)."""
    n = len(f["y_pool"])
    keep = np.isin(f["y_pool"], known)
    remap = {c: i for i, c in enumerate(known)}
    y_known = np.array([remap[c] for c in f["y_pool"][keep]])
    x_orig, x_flip = f["x_pool"][:n][keep], f["x_pool"][n:][keep]
    wide = widen_head(species_head(f["head"], len(known)), seed)
    cached = CachedFeatures(np.concatenate([x_orig, x_flip]), y_known, x_orig[:0], y_known[:0], True,
                            HeadFit(seed=seed), copy.deepcopy(wide), x_other=other)
    oof_logits, oof_y = out_of_fold_logits(cached)
    x_other, y_other = cached.other_rows()
    train_head(wide, np.concatenate([cached.x_train, x_other]), np.concatenate([y_known, y_known, y_other]),
               x_orig[:1], y_known[:1], cached.fit)
    test_logits = head_logits(wide, f["x_test"])
    test_known = np.isin(f["y_test"], known)
    label = len(known)
    rows = []
    for rate in (1.0,) + PASS_RATES:
        cal = calibrate(oof_logits, oof_y, target_precision=OOF_TARGET_PRECISION, bound=OOF_BOUND,
                        source="out-of-fold", other_pass=rate)
        probs = softmax(test_logits, cal.temperature)
        confidence = probs[:, :label].max(1)
        right = probs[:, :label].argmax(1) == np.array([remap.get(c, -1) for c in f["y_test"]])
        ok = (confidence >= cal.species_threshold) & ~held_back(probs[:, label], confidence, cal.other_threshold)
        rows.append({"method": "other-bird class" + ("" if rate == 1.0 else f", pass {rate:.0%}"), "seed": seed,
                     "known_coverage": float(ok[test_known].mean()),
                     "known_precision": float(right[test_known & ok].mean()) if ok[test_known].any() else 1.0,
                     "unknown_held_back": float(1 - ok[~test_known].mean()), "threshold": cal.species_threshold,
                     "other_threshold": cal.other_threshold})
    return rows


def one_seed(f: dict, seed: int, other: np.ndarray | None = None) -> list[dict]:
    """Hold 10 species out, fit the head on the 40, calibrate out-of-fold, score every method on the test photos."""
    rng = np.random.default_rng(seed)
    classes = np.unique(f["y_pool"])
    unknown = rng.choice(classes, UNKNOWN, replace=False)
    known = np.setdiff1d(classes, unknown)
    n = len(f["y_pool"])
    keep = np.isin(f["y_pool"], known)
    remap = {c: i for i, c in enumerate(known)}
    y = np.array([remap.get(c, -1) for c in f["y_pool"]])
    x_orig, x_flip = f["x_pool"][:n][keep], f["x_pool"][n:][keep]
    y_known = y[keep]
    fit = HeadFit(seed=seed)
    cached = CachedFeatures(np.concatenate([x_orig, x_flip]), y_known, x_orig[:0], y_known[:0], True, fit,
                            f["head"])
    oof_logits, oof_y = out_of_fold_logits(cached)
    oof_logits = oof_logits[:, : len(known)]  # the head keeps 50 outputs; the 10 unused ones never win
    cal = calibrate(oof_logits, oof_y, target_precision=OOF_TARGET_PRECISION, bound=OOF_BOUND, source="out-of-fold")
    head = copy.deepcopy(f["head"])
    train_head(head, cached.x_train, np.concatenate([y_known, y_known]), x_orig[:1], y_known[:1], fit)
    test_known = np.isin(f["y_test"], known)
    logits = head_logits(head, f["x_test"])[:, : len(known)]
    probs = softmax(logits, cal.temperature)
    confident = probs.max(1) >= cal.species_threshold
    right = probs.argmax(1) == np.array([remap.get(c, -1) for c in f["y_test"]])
    extra = {"max-softmax": (None, None)}
    for k in (1, 10):
        extra[f"knn k={k}"] = (knn_distance(x_orig, x_orig, k, skip_self=True), knn_distance(x_orig, f["x_test"], k))
    extra["mahalanobis"] = (mahalanobis_distance(x_orig, y_known, x_orig),
                            mahalanobis_distance(x_orig, y_known, f["x_test"]))
    rows = []
    for name, (known_scores, test_scores) in extra.items():
        for rate in PASS_RATES if known_scores is not None else (1.0,):
            ok = confident if known_scores is None else confident & (test_scores <= np.quantile(known_scores, rate))
            rows.append({"method": name if known_scores is None else f"{name}, pass {rate:.0%}", "seed": seed,
                         "known_coverage": float(ok[test_known].mean()),
                         "known_precision": float(right[test_known & ok].mean()) if ok[test_known].any() else 1.0,
                         "unknown_held_back": float(1 - ok[~test_known].mean()),
                         "threshold": cal.species_threshold})
    if other is not None:
        rows += with_other_class(f, other, known, seed)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Median and range over seeds, per method."""
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        cells = {"method": name}
        for key in ("known_coverage", "known_precision", "unknown_held_back"):
            v = np.array([r[key] for r in group])
            cells[key] = f"{np.median(v):.1%} ({v.min():.1%}-{v.max():.1%})"
        met = [r["unknown_held_back"] >= 0.7 and r["known_coverage"] >= 0.7 and r["known_precision"] >= 0.97
               for r in group]
        cells["met"] = f"{sum(met)}/{len(group)}"
        out.append(cells)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "cub50")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "birdclf-bench-features")
    args = parser.parse_args()
    t = time.perf_counter()
    f = features(args.data, args.cache, other_birds(args.data))
    rows = []
    for seed in range(args.seeds):
        rows += one_seed(f, seed, f["x_others"])
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    table = summarise(rows)
    print_table(table, ["method", "known_coverage", "known_precision", "unknown_held_back", "met"])
    write_json("open_set", {"machine": machine(), "rows": rows, "summary": table, "unknown_species": UNKNOWN,
                            "seconds": time.perf_counter() - t})


if __name__ == "__main__":
    main()
