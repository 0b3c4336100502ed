"""How stable is the species threshold? Coverage and precision of `species` on held-out test photos for each way
of choosing it, over several seeds and validation sizes, for the 50-species lite0 head on cached features (cub50).

Each seed draws `size` validation photos from cub50's train+valid (the rest train the head, the recipe's
`--fast-head --epochs 0`), fits the head, then each method picks the temperature and threshold; the 1,499 test
photos say what the choice is worth. Methods: "point" (before: the lowest threshold whose validation precision
reaches 98%), Wilson / Clopper-Pearson lower bounds on precision, and out-of-fold (oof) predictions over
train+valid (5 heads, each fitted without one fold) with or without a bound.

Run: GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295 \
     .venv/bin/python -m bench.calibration [--seeds 5] [--sizes 40 100 150 500]
Prints the table (median and range over seeds) and writes bench/results/calibration.json.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import SHARED, machine, print_table, write_json
from birdclf.training.calibration import fit_temperature, softmax, species_threshold
from birdclf.training.features import (
    CachedFeatures,
    HeadFit,
    extract_features,
    head_logits,
    out_of_fold_logits,
    train_head,
)
from birdclf.training.trainer import TrainingRun, recipe

# (name, calibrate on, bound, target precision of that bound)
METHODS = [("point 98% (before)", "valid", "point", 0.98),
           ("wilson 97%", "valid", "wilson", 0.97),
           ("clopper-pearson 97%", "valid", "clopper-pearson", 0.97),
           ("oof point 98%", "oof", "point", 0.98),
           ("oof point 97.5%", "oof", "point", 0.975),
           ("oof wilson 97%", "oof", "wilson", 0.97)]


def features(data: Path, cache: Path, others: list[Path] | None = None) -> dict:
    """Pooled lite0 features of cub50's train+valid (with mirrored copies) and test, and a fresh head; with
    `others`, also those photos' features (originals, then mirrored copies) as "x_others"."""
    with tempfile.TemporaryDirectory() as out:
        run = TrainingRun(recipe(data, gpu=False, epochs=0, fast_head=True, out=out, name="features"))
        vocab = list(run.dls.vocab)
        pool = run.splits["train"] + run.splits["valid"]
        paths = [p for p, _ in pool]
        x_pool = extract_features(run.learn, paths, flip=True, cache_dir=cache)
        x_test = extract_features(run.learn, [p for p, _ in run.splits["test"]], flip=False, cache_dir=cache)
        x_others = extract_features(run.learn, others, flip=True, cache_dir=cache) if others else None
        return {"x_pool": x_pool, "y_pool": np.array([vocab.index(label) for _, label in pool]),
                "x_test": x_test, "y_test": np.array([vocab.index(label) for _, label in run.splits["test"]]),
                "head": copy.deepcopy(run.learn.model[1][2:]), "x_others": x_others}


def test_stats(test_logits: np.ndarray, y_test: np.ndarray, temperature: float, threshold: float) -> dict:
    """Coverage and precision of `species` on the test photos."""
    probs = softmax(test_logits, temperature)
    answered = probs.max(1) >= threshold
    right = probs.argmax(1) == y_test
    return {"coverage": float(answered.mean()), "precision": float(right[answered].mean()) if answered.any() else 1.0}


def one_split(f: dict, size: int, seed: int, fit: HeadFit) -> list[dict]:
    """Draw a validation split, fit the head, and score every method on the test photos."""
    n = len(f["y_pool"])
    rng = np.random.default_rng(seed)
    valid = np.zeros(n, bool)
    valid[rng.choice(n, size, replace=False)] = True
    x_orig, x_flip = f["x_pool"][:n], f["x_pool"][n:]
    cached = CachedFeatures(np.concatenate([x_orig[~valid], x_flip[~valid]]), f["y_pool"][~valid], x_orig[valid],
                            f["y_pool"][valid], True, fit, f["head"])
    head = copy.deepcopy(f["head"])
    train_head(head, cached.x_train, np.concatenate([cached.y_train, cached.y_train]), cached.x_valid,
               cached.y_valid, fit)
    test_logits = head_logits(head, f["x_test"])
    sources = {"valid": (head_logits(head, cached.x_valid), cached.y_valid)}
    if any(on == "oof" for _, on, _, _ in METHODS):
        sources["oof"] = out_of_fold_logits(cached)
    rows = []
    for name, on, bound, target in METHODS:
        logits, targets = sources[on]
        temperature = fit_temperature(logits, targets)
        probs = softmax(logits, temperature)
        threshold = species_threshold(probs.max(1), probs.argmax(1) == targets, target, bound)
        rows.append({"method": name, "size": size, "seed": seed, "temperature": temperature, "threshold": threshold,
                     "calibration_photos": int(len(targets)), **test_stats(test_logits, f["y_test"], temperature,
                                                                            threshold)})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Median and range over seeds, per method and validation size."""
    out = []
    for name, *_ in METHODS:
        for size in sorted({r["size"] for r in rows}):
            group = [r for r in rows if r["method"] == name and r["size"] == size]
            cov, prec = np.array([r["coverage"] for r in group]), np.array([r["precision"] for r in group])
            thr = np.array([r["threshold"] for r in group])
            out.append({"method": name, "valid": size,
                        "coverage": f"{np.median(cov):.1%} ({cov.min():.1%}-{cov.max():.1%})",
                        "precision": f"{np.median(prec):.1%} ({prec.min():.1%}-{prec.max():.1%})",
                        "threshold": f"{np.median(thr):.3f} ({thr.min():.3f}-{thr.max():.3f})",
                        "met": f"{int(((cov >= 0.75) & (prec >= 0.97)).sum())}/{len(group)}"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "cub50")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 100, 150, 500])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "birdclf-bench-features")
    args = parser.parse_args()
    t = time.perf_counter()
    f = features(args.data, args.cache)
    rows = []
    for size in args.sizes:
        for seed in range(args.seeds):
            rows += one_split(f, size, seed, HeadFit(seed=seed))
            print(f"size {size} seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    table = summarise(rows)
    print_table(table, ["method", "valid", "coverage", "precision", "threshold", "met"])
    write_json("calibration", {"machine": machine(), "rows": rows, "summary": table,
                               "test_photos": int(len(f["y_test"])), "seconds": time.perf_counter() - t})


if __name__ == "__main__":
    main()
