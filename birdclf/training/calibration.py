"""Calibrated abstention, fitted at the end of every run: a temperature for the species probabilities, the top-1
probability above which the answer is "species" (else "unsure"), and the bird gate's threshold (so that the
validation birds pass). The species threshold rests on out-of-fold predictions over train+valid with a Wilson lower
bound on precision when the head was fitted on cached features (cheap to refit), else on the validation split."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..constants import STARTER_BIRD_THRESHOLD

__all__ = ["Calibration", "fit_temperature", "species_threshold", "gate_threshold", "calibrate", "risk_coverage",
           "reliability", "abstention_stats", "softmax", "precision_bound", "held_back", "TARGET_PRECISION",
           "TARGET_BIRD_PASS", "BOUND_LEVEL", "OOF_TARGET_PRECISION", "OOF_BOUND", "OOF_FOLDS", "OOF_MAX_PHOTOS"]

TARGET_PRECISION = 0.98  # top-1 accuracy wanted among the answers given as "species"
TARGET_BIRD_PASS = 0.99  # share of (validation) bird photos the gate must let through
MIN_GATE_THRESHOLD = 0.02
BOUND_LEVEL = 0.9  # one-sided confidence of the precision bound the model card states
OOF_TARGET_PRECISION = 0.97  # out-of-fold calibration (cached-feature head): Wilson bound at BOUND_LEVEL >= this
OOF_BOUND = "wilson"  # chosen by bench/calibration.py: met the 97% target on test photos in 20 of 20 splits
OOF_FOLDS = 5
OOF_MAX_PHOTOS = 20_000  # above this, out-of-fold refits cost minutes and the validation split is large anyway


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over classes: the serving side's own softmax, so both compute the same."""
    from ..serving.predictor import softmax as serving_softmax

    return serving_softmax(np.asarray(logits) / temperature)


def _nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    probs = softmax(logits.astype(np.float64), temperature)
    return float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (Guo et al., 2017)."""
    if len(targets) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = grid[int(np.argmin([_nll(logits, targets, t) for t in grid]))]
    fine = best * np.exp(np.linspace(-0.05, 0.05, 41))
    return float(fine[int(np.argmin([_nll(logits, targets, t) for t in fine]))])


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> list[dict[str, float]]:
    """For each threshold (every distinct confidence): coverage (share answered) and precision of the answers."""
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], correct[order].astype(np.float64)
    answered = np.arange(1, len(conf) + 1)
    precision = np.cumsum(hits) / answered
    return [{"threshold": float(c), "coverage": float(n / len(conf)), "precision": float(p)}
            for c, n, p in zip(conf, answered, precision)]


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Confidence against accuracy in equal-width bins, and the expected calibration error (photo-weighted mean
    gap): how far "90% sure" is from being right 9 times in 10."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows, gap = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
        rows.append({"low": b / bins, "high": (b + 1) / bins, "photos": int(inside.sum()),
                     "confidence": round(conf, 4), "accuracy": round(acc, 4)})
        gap += inside.sum() * abs(conf - acc)
    return {"bins": rows, "ece": round(gap / max(len(confidence), 1), 4), "photos": int(len(confidence))}


def precision_bound(hits: np.ndarray, answered: np.ndarray, method: str = "wilson",
                    level: float = BOUND_LEVEL) -> np.ndarray:
    """One-sided lower confidence bound on precision (hits of answered), elementwise: "point" (no bound),
    "wilson" (Wilson score interval) or "clopper-pearson" (exact, conservative)."""
    hits, answered = np.asarray(hits, np.float64), np.maximum(np.asarray(answered, np.float64), 1.0)
    if method == "point":
        return hits / answered
    if method == "clopper-pearson":
        from scipy.stats import beta

        return np.where(hits > 0, beta.ppf(1.0 - level, hits, answered - hits + 1), 0.0)
    if method != "wilson":
        raise ValueError(f"unknown precision bound {method!r}: point, wilson or clopper-pearson")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(level)
    p = hits / answered
    centre = p + z * z / (2 * answered)
    spread = z * np.sqrt(p * (1 - p) / answered + z * z / (4 * answered * answered))
    return (centre - spread) / (1 + z * z / answered)


def species_threshold(confidence: np.ndarray, correct: np.ndarray, target: float = TARGET_PRECISION,
                      bound: str = "point", level: float = BOUND_LEVEL) -> float:
    """The lowest confidence threshold whose answers reach `target` precision on these data (its `bound`, with
    `level` confidence; 1.0 if none does)."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    conf, hits = np.asarray(confidence)[order], np.cumsum(np.asarray(correct)[order])
    lower = precision_bound(hits, np.arange(1, len(conf) + 1), bound, level)
    ok = np.flatnonzero(lower >= target)
    if not len(ok):
        return 1.0
    last = ok[-1]  # answers down to this confidence; photos tied with it are answered too
    return float(min(conf[last], 1.0))


def gate_threshold(bird_probability: np.ndarray, default: float = STARTER_BIRD_THRESHOLD,
                   target: float = TARGET_BIRD_PASS) -> float:
    """The starter's threshold, lowered if fewer than `target` of these bird photos would pass it."""
    if len(bird_probability) == 0:
        return default
    quantile = float(np.quantile(bird_probability, 1.0 - target))
    return float(max(MIN_GATE_THRESHOLD, min(default, quantile)))


@dataclass
class Calibration:
    """What `calibrate` fitted and how it does on the data it was fitted on."""

    temperature: float
    species_threshold: float
    bird_threshold: float | None
    images: int  # photos the temperature and the species threshold rest on
    valid_accuracy: float
    coverage: float  # share of those photos answered "species"
    precision: float  # top-1 accuracy among them
    bird_pass: float | None  # share of validation photos (all birds) passing the gate
    source: str = "validation"  # or "out-of-fold" (train+valid, each photo predicted by a head fitted without it)
    bound: str = "point"  # how precision was estimated: point, wilson or clopper-pearson
    level: float = BOUND_LEVEL  # one-sided confidence of the bound
    target_precision: float = TARGET_PRECISION
    precision_bound: float = 0.0  # lower bound (Wilson unless chosen by Clopper-Pearson) on the precision of
    # "species" answers at the chosen threshold, at `level` confidence
    other_threshold: float | None = None  # with an other-bird class: P(other) above which a photo is held back
    other_pass: float | None = None  # ... chosen so that this share of the known photos stays under it

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def summary(self) -> str:
        """One sentence for the model card: what the threshold promises and what it rests on."""
        method = "Clopper-Pearson" if self.bound == "clopper-pearson" else "Wilson"
        promise = (f"{_pct(self.precision)} of those right; precision at least {_pct(self.precision_bound)} with "
                   f"{self.level:.0%} confidence ({method} bound)")
        where = ("out-of-fold predictions over train+valid" if self.source == "out-of-fold"
                 else "the validation photos")
        other = "" if self.other_threshold is None else (
            f" A photo is held back when the other-bird class wins or its probability is above "
            f"{self.other_threshold:.3f} (what {_pct(self.other_pass or 0)} of these photos stay under).")
        return (f"Threshold fitted on {self.images} photos ({where}): {_pct(self.coverage)} of them answered "
                f"`species`, {promise}.{other}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def calibrate(logits: np.ndarray, targets: np.ndarray, bird_probability: np.ndarray | None = None,
              target_precision: float = TARGET_PRECISION, bound: str = "point", level: float = BOUND_LEVEL,
              source: str = "validation", other_pass: float | None = None) -> Calibration:
    """Temperature and species threshold from labelled logits (validation, or out-of-fold), and the gate
    threshold from the validation photos' P(bird). The threshold is the lowest whose answers' precision (its lower
    `bound` at `level`) reaches `target_precision`. With `other_pass`, the logits' last column is an other-bird
    class: temperature and threshold rest on the photos it does not win (those are held back anyway), and P(other)
    above what `other_pass` of the photos reach holds a photo back."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
    n = logits.shape[1] - (other_pass is not None)
    mine = logits.argmax(1) < n  # an other-bird answer is never a species answer
    temperature = fit_temperature(logits[mine], targets[mine])
    probs = softmax(logits, temperature)
    confidence, correct = probs[:, :n].max(1), probs[:, :n].argmax(1) == targets
    threshold = species_threshold(confidence[mine], correct[mine], target_precision, bound, level)
    answered = confidence >= threshold
    other_threshold = None
    if other_pass is not None:
        other_threshold = round(float(np.quantile(probs[:, n], other_pass)), 4) if len(targets) else 1.0
        answered &= ~held_back(probs[:, n], confidence, other_threshold)
    stated = "clopper-pearson" if bound == "clopper-pearson" else "wilson"
    lower = float(precision_bound(correct[answered].sum(), answered.sum(), stated, level)) if answered.any() else 0.0
    bird_threshold = gate_threshold(bird_probability) if bird_probability is not None else None
    return Calibration(
        temperature=round(temperature, 4), species_threshold=round(threshold, 4), bird_threshold=bird_threshold,
        images=int(len(targets)), valid_accuracy=float(correct.mean()) if len(targets) else 0.0,
        coverage=float(answered.mean()) if len(targets) else 0.0,
        precision=float(correct[answered].mean()) if answered.any() else 1.0,
        bird_pass=float((bird_probability >= bird_threshold).mean()) if bird_probability is not None else None,
        source=source, bound=bound, level=level, target_precision=target_precision, precision_bound=round(lower, 4),
        other_threshold=other_threshold, other_pass=other_pass)


def held_back(other: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Which photos the other-bird rule holds back (the serving rule, `OtherBird.holds_back`, on every row)."""
    from ..serving.other_bird import OtherBird

    return np.asarray(OtherBird(threshold).holds_back(np.asarray(other), np.asarray(confidence)), bool)


def abstention_stats(logits: np.ndarray, targets: np.ndarray, calibration: Any,
                     bird_probability: np.ndarray | None = None) -> dict[str, Any]:
    """How a calibration's verdicts do on labelled bird photos: coverage and precision of "species", the share
    answered "unsure", and the share the gate lets through. With an other-bird class (the calibration's
    `other_threshold`), its logit is the logits' last column."""
    cal = calibration.to_dict() if hasattr(calibration, "to_dict") else dict(calibration)
    probs = softmax(np.asarray(logits, np.float64), float(cal["temperature"]))
    other = cal.get("other_threshold")
    n = probs.shape[1] - (other is not None)
    confidence, correct = probs[:, :n].max(1), probs[:, :n].argmax(1) == np.asarray(targets)
    passed = (bird_probability >= cal["bird_threshold"]) if (bird_probability is not None
                                                             and cal.get("bird_threshold") is not None) \
        else np.ones(len(confidence), bool)
    species = passed & (confidence >= float(cal["species_threshold"]))
    if other is not None:
        species &= ~held_back(probs[:, n], confidence, float(other))
    n = max(1, len(confidence))
    return {"images": int(len(confidence)), "coverage": round(float(species.sum() / n), 4),
            "precision": round(float(correct[species].mean()), 4) if species.any() else None,
            "unsure": round(float((passed & ~species).sum() / n), 4),
            "not_a_bird": round(float((~passed).sum() / n), 4)}
