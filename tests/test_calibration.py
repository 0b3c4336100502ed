"""Calibration and verdicts: temperature scaling, the species threshold, the gate threshold, the model card."""

from __future__ import annotations

import numpy as np
import pytest

from birdclf.serving.predictor import verdict_of
from birdclf.training.calibration import (
    abstention_stats,
    calibrate,
    fit_temperature,
    gate_threshold,
    precision_bound,
    reliability,
    risk_coverage,
    softmax,
    species_threshold,
)
from birdclf.training.card import build_card, render_card


def synthetic(n: int = 4000, classes: int = 10, true_temperature: float = 2.5, seed: int = 0):
    """Labels drawn from softmax(logits / T): a perfectly calibrated model at temperature T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, classes))
    probs = softmax(logits, true_temperature)
    targets = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, targets


def test_temperature_is_recovered():
    logits, targets = synthetic()
    assert abs(fit_temperature(logits, targets) - 2.5) < 0.25
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0


def test_species_threshold_reaches_the_target_precision():
    logits, targets = synthetic()
    probs = softmax(logits, 2.5)
    confidence, correct = probs.max(1), probs.argmax(1) == targets
    threshold = species_threshold(confidence, correct, 0.75)
    answered = confidence >= threshold
    assert correct[answered].mean() >= 0.75 and 0.05 < answered.mean() < 1.0
    assert correct.mean() < 0.75  # answering everything would miss the target
    curve = risk_coverage(confidence, correct)
    assert curve[0]["coverage"] < curve[-1]["coverage"] == 1.0
    assert species_threshold(confidence, np.zeros_like(correct), 0.9) == 1.0  # never right: never "species"


def test_precision_bounds():
    answered = np.array([10, 146, 1000])
    point = precision_bound(answered, answered, "point")
    wilson = precision_bound(answered, answered, "wilson", 0.9)
    exact = precision_bound(answered, answered, "clopper-pearson", 0.9)
    assert (point == 1).all() and (np.diff(wilson) > 0).all()  # more photos, tighter bound
    assert abs(wilson[1] - 0.9889) < 1e-3  # 146 of 146 right: at least 98.9% with 90% confidence
    assert abs(exact[0] - 0.1 ** 0.1) < 1e-9  # Clopper-Pearson at zero errors: (1 - level) ** (1 / n)
    assert (exact <= wilson + 1e-9).all() and precision_bound(0, 5, "wilson") < 1e-9
    with pytest.raises(ValueError, match="unknown precision bound"):
        precision_bound(answered, answered, "bayes")


def test_bounded_threshold_is_stricter_on_few_photos():
    """On 100 photos the point estimate answers down to where precision just touches the target; the Wilson bound
    waits for evidence, and the card says what the chosen threshold rests on."""
    logits, targets = synthetic(100, seed=3)
    probs = softmax(logits, 2.5)
    confidence, correct = probs.max(1), probs.argmax(1) == targets
    point = species_threshold(confidence, correct, 0.8)
    bounded = species_threshold(confidence, correct, 0.8, "wilson")
    assert point < bounded < 1.0
    cal = calibrate(logits, targets, target_precision=0.8, bound="wilson", source="out-of-fold")
    assert cal.coverage > 0 and cal.precision_bound >= 0.8 and cal.images == 100 and cal.bound == "wilson"
    assert "100 photos (out-of-fold" in cal.summary() and "Wilson bound" in cal.summary()


def test_reliability_sees_overconfidence(tmp_path):
    from birdclf.training.evaluate import plot_reliability

    logits, targets = synthetic()
    calibrated, sharp = softmax(logits, 2.5), softmax(logits, 1.0)
    good = reliability(calibrated.max(1), calibrated.argmax(1) == targets)
    bad = reliability(sharp.max(1), sharp.argmax(1) == targets)
    assert good["ece"] < 0.03 < 0.1 < bad["ece"] and good["photos"] == sum(b["photos"] for b in good["bins"])
    assert all(b["accuracy"] < b["confidence"] for b in bad["bins"] if b["photos"] > 50)  # sure, and wrong more
    plot_reliability(good, tmp_path / "r.png", 0.8)
    assert (tmp_path / "r.png").stat().st_size > 5000


def test_gate_threshold_lets_the_birds_through():
    assert gate_threshold(np.full(100, 0.9)) == 0.15  # birds score high: keep the starter's threshold
    lowered = gate_threshold(np.linspace(0.03, 0.9, 200))
    assert 0.02 <= lowered < 0.15 and (np.linspace(0.03, 0.9, 200) >= lowered).mean() >= 0.99


def test_calibrate_and_abstention_stats():
    logits, targets = synthetic(2000)
    bird = np.full(len(targets), 0.95)
    bird[:20] = 0.01
    cal = calibrate(logits, targets, bird)
    assert cal.temperature > 1 and 0 < cal.coverage <= 1 and cal.precision >= 0.98
    stats = abstention_stats(logits, targets, cal, bird)
    assert stats["images"] == 2000 and abs(stats["coverage"] + stats["unsure"] + stats["not_a_bird"] - 1) < 1e-3


@pytest.mark.parametrize("confidence,bird,verdict", [(0.9, 0.9, "species"), (0.3, 0.9, "unsure"),
                                                     (0.99, 0.05, "not_a_bird"), (0.9, None, "species")])
def test_verdict_rule(confidence, bird, verdict):
    assert verdict_of(confidence, bird, bird_threshold=0.15, species_threshold=0.8) == verdict


def test_card_has_no_local_paths_and_renders():
    card = build_card("birdclf-lite0", "run-1", "tf_efficientnet_lite0", "pypi:x", "/home/me/secret/cub50", "given",
                      50, {"train": 1, "valid": 1, "test": 1},
                      {"accuracy": 0.9, "top5_accuracy": 0.99, "f1_weighted": 0.9, "num_images": 10,
                       "worst_classes": [{"class": "Rock_Wren", "f1": 0.5}],
                       "abstention": {"coverage": 0.8, "precision": 0.99}},
                      {"temperature": 1.2, "species_threshold": 0.7, "coverage": 0.8, "precision": 0.98,
                       "bird_threshold": 0.15, "bird_pass": 1.0})
    assert "secret" not in str(card) and card["data"]["source"] == "cub50"
    text = render_card(card)
    for words in ("Intended use", "Rock_Wren 0.5", "softmax(logits / 1.2)", "Bird gate", "Limits", "Test: 80.0%"):
        assert words in text


@pytest.mark.parametrize("gate,words", [("shared", "backbone's ImageNet classifier"), ("fixed", "fixed branch"),
                                        (None, None)])
def test_card_names_the_gate_exported_and_where_the_data_came_from(tmp_path, gate, words):
    """A fine-tuned run ships the fixed gate branch and its card says so; a folder `birdclf data download` fetched
    is named with its Kaggle source and version."""
    import json

    from birdclf.data.download import ORIGIN_FILE

    data = tmp_path / "100-bird-species-v3" / "extracted"
    data.mkdir(parents=True)
    (data / ORIGIN_FILE).write_text(json.dumps({"source": "kaggle:gpiosenka/100-bird-species/3", "version": 3,
                                                "downloaded": "2026-12-04"}))
    card = build_card("m", "run", "efficientnet_b3a", "timm-hub", data, "given", 3, {"train": 1}, None,
                      {"temperature": 1.0, "species_threshold": 0.7, "coverage": 0.8, "precision": 0.98,
                       "bird_threshold": 0.15, "bird_pass": 1.0}, gate=gate)
    assert card["data"]["origin"] == {"source": "kaggle:gpiosenka/100-bird-species/3", "version": 3,
                                      "downloaded": "2026-12-04"}
    text = render_card(card)
    assert "downloaded from `kaggle:gpiosenka/100-bird-species/3` (version: 3, 2026-12-04)" in text
    if words is None:
        assert "gate" not in card and "Bird gate" not in text
    else:
        assert card["gate"]["branch"] == gate and words in card["gate"]["kind"] and words in text
