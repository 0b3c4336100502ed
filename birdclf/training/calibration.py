"""Calibrated abstention, fitted on the validation split at the end of every run: a temperature for the species
probabilities, the top-1 probability above which the answer is "species" (else "unsure"), and the bird gate's
threshold (so that the validation birds pass)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..constants import STARTER_BIRD_THRESHOLD

__all__ = ["Calibration", "fit_temperature", "species_threshold", "gate_threshold", "calibrate",
           "risk_coverage", "abstention_stats", "softmax", "TARGET_PRECISION", "TARGET_BIRD_PASS"]

TARGET_PRECISION = 0.98  # top-1 accuracy wanted among the answers given as "species"
TARGET_BIRD_PASS = 0.99  # share of (validation) bird photos the gate must let through
MIN_GATE_THRESHOLD = 0.02


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


def species_threshold(confidence: np.ndarray, correct: np.ndarray, target: float = TARGET_PRECISION) -> float:
    """The lowest confidence threshold whose answers reach `target` precision on these data (1.0 if none does)."""
    best = 1.0
    for point in risk_coverage(confidence, correct):
        if point["precision"] >= target:
            best = point["threshold"]
    return float(min(best, 1.0))


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
    images: int
    valid_accuracy: float
    coverage: float  # share of validation photos answered "species"
    precision: float  # top-1 accuracy among them
    bird_pass: float | None  # share of validation photos (all birds) passing the gate

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def calibrate(logits: np.ndarray, targets: np.ndarray, bird_probability: np.ndarray | None = None,
              target_precision: float = TARGET_PRECISION) -> Calibration:
    """Temperature, species threshold and gate threshold from validation logits, labels and P(bird)."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
    temperature = fit_temperature(logits, targets)
    probs = softmax(logits, temperature)
    confidence, correct = probs.max(1), probs.argmax(1) == targets
    threshold = species_threshold(confidence, correct, target_precision)
    answered = confidence >= threshold
    bird_threshold = gate_threshold(bird_probability) if bird_probability is not None else None
    return Calibration(
        temperature=round(temperature, 4), species_threshold=round(threshold, 4), bird_threshold=bird_threshold,
        images=int(len(targets)), valid_accuracy=float(correct.mean()) if len(targets) else 0.0,
        coverage=float(answered.mean()) if len(targets) else 0.0,
        precision=float(correct[answered].mean()) if answered.any() else 1.0,
        bird_pass=float((bird_probability >= bird_threshold).mean()) if bird_probability is not None else None)


def abstention_stats(logits: np.ndarray, targets: np.ndarray, calibration: Any,
                     bird_probability: np.ndarray | None = None) -> dict[str, Any]:
    """How a calibration's verdicts do on labelled bird photos: coverage and precision of "species", the share
    answered "unsure", and the share the gate lets through."""
    cal = calibration.to_dict() if hasattr(calibration, "to_dict") else dict(calibration)
    probs = softmax(np.asarray(logits, np.float64), float(cal["temperature"]))
    confidence, correct = probs.max(1), probs.argmax(1) == np.asarray(targets)
    passed = (bird_probability >= cal["bird_threshold"]) if (bird_probability is not None
                                                             and cal.get("bird_threshold") is not None) \
        else np.ones(len(confidence), bool)
    species = passed & (confidence >= float(cal["species_threshold"]))
    n = max(1, len(confidence))
    return {"images": int(len(confidence)), "coverage": round(float(species.sum() / n), 4),
            "precision": round(float(correct[species].mean()), 4) if species.any() else None,
            "unsure": round(float((passed & ~species).sum() / n), 4),
            "not_a_bird": round(float((~passed).sum() / n), 4)}
