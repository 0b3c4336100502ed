"""The other-bird class (`birdclf train --other-birds`): species the model was not trained on are held back."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from birdclf.constants import OTHER_BIRD_PASS
from birdclf.errors import ModelFormatError
from birdclf.serving.other_bird import OtherBird
from birdclf.serving.predictor import verdict_of


def test_verdict_holds_back_what_the_other_bird_class_claims():
    rule = OtherBird(threshold=0.2)
    assert verdict_of(0.9, 0.9, 0.5, 0.8, other=0.1, other_bird=rule) == "species"
    assert verdict_of(0.9, 0.9, 0.5, 0.8, other=0.25, other_bird=rule) == "unsure"  # above what known photos reach
    assert verdict_of(0.15, 0.9, 0.5, 0.1, other=0.18, other_bird=rule) == "unsure"  # the class wins
    assert verdict_of(0.9, 0.1, 0.5, 0.8, other=0.5, other_bird=rule) == "not_a_bird"
    assert verdict_of(0.9, 0.9, 0.5, 0.8, other=0.5) == "species"  # a model without the rule answers as before


def test_other_bird_rule_from_metadata():
    assert OtherBird.from_config(None) is None
    assert OtherBird.from_config({"threshold": 0.3, "pass_rate": 0.85, "photos": 12}) == OtherBird(0.3, 0.85, 12)
    for bad in ({"threshold": "high"}, {"pass_rate": 0.85}, {"threshold": 1.5}, {"threshold": float("nan")}, [0.3]):
        with pytest.raises(ModelFormatError, match="other-bird"):
            OtherBird.from_config(bad)


def test_calibration_with_an_other_bird_class():
    """Temperature and threshold rest on the photos the other-bird class does not win; P(other) above what
    `other_pass` of the photos reach holds a photo back, and the stated coverage counts that."""
    from birdclf.training.calibration import calibrate, softmax

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 5))
    logits[np.arange(400), targets] += 4.0
    logits[:40, 4] += 8.0  # 10% of the photos look like other birds
    plain = calibrate(logits[:, :4], targets, target_precision=0.9)
    cal = calibrate(logits, targets, target_precision=0.9, other_pass=0.85)
    assert plain.other_threshold is None and cal.other_pass == 0.85
    probs = softmax(logits, cal.temperature)
    assert abs(cal.other_threshold - np.quantile(probs[:, 4], 0.85)) < 1e-4
    assert cal.coverage <= 0.85 + 1e-9 and cal.coverage < plain.coverage  # the held-back photos are not answered
    assert "held back" in cal.summary() and "held back" not in plain.summary()


def test_widened_head_splits_into_the_learners_head_and_an_other_bird_linear():
    import torch
    from torch import nn

    from birdclf.training.other_birds import split_head, widen_head, with_other_bird

    torch.manual_seed(0)
    head = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).eval()
    wide = widen_head(head)
    assert wide[-1].out_features == 4 and wide[0] is head[0]  # shares the hidden layers
    with torch.no_grad():
        wide[-1].weight.add_(torch.randn_like(wide[-1].weight))  # as if fitted
        x = torch.randn(5, 8)
        expected = wide(x)
        other = split_head(head, wide)
        species, other_logit = with_other_bird(head, other, x)
    assert torch.allclose(species, expected[:, :3]) and torch.allclose(other_logit, expected[:, 3:])


def test_other_bird_photos_leave_out_the_datas_own_species(tmp_path):
    from birdclf.errors import DataError
    from birdclf.training.other_birds import other_bird_photos
    from tests.conftest import make_image

    for folder in ("SNOWY OWL", "red cardinal", "nested/KIWI", "Blue_Bunting"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "1.jpg").write_bytes(make_image())
    kept = other_bird_photos(tmp_path, ["RED  CARDINAL", "BLUE BUNTING"])
    assert sorted(p.parent.name for p in kept) == ["KIWI", "SNOWY OWL"]
    with pytest.raises(DataError, match="no photos of other birds"):
        other_bird_photos(tmp_path / "red cardinal", ["RED CARDINAL"])


def test_other_birds_needs_the_head_only_recipe(tmp_path):
    from birdclf.errors import BirdclfError
    from birdclf.training.trainer import TrainConfig

    with pytest.raises(BirdclfError, match="--fast-head --epochs 0"):
        TrainConfig(data=str(tmp_path), fast_head=True, epochs=3, other_birds=str(tmp_path))
    with pytest.raises(BirdclfError, match="needs the pretrained ImageNet weights"):  # at once, not at export
        TrainConfig(data=str(tmp_path), fast_head=True, epochs=0, pretrained=False, other_birds=str(tmp_path))


@pytest.mark.slow
def test_trained_other_bird_class_holds_back_unseen_species(shared_bird_dataset, tmp_path):
    """A real head-only run with photos of three other species: the ONNX model carries the class and its rule,
    the Predictor holds back photos of species it was not trained on and keeps its own, and INT8 keeps both."""
    pytest.importorskip("fastai")
    import onnxruntime as ort

    from birdclf.data.labels import normalize_label
    from birdclf.data.synthetic import make_kaggle_quirks
    from birdclf.serving.predictor import Predictor
    from birdclf.settings import Settings
    from birdclf.training.export import quantize_images
    from birdclf.training.trainer import TrainConfig, train

    others = make_kaggle_quirks(tmp_path / "others", per_split={"train": 8, "test": 3})
    cfg = TrainConfig(data=str(shared_bird_dataset), arch="tf_efficientnet_lite0", epochs=0, bs=8, input_size=64,
                      fast_head=True, head_epochs=6, num_workers=0, out=str(tmp_path / "runs"), name="ob",
                      other_birds=str(others / "train"))
    run = train(cfg)
    model = run.run_dir / "model.onnx"
    assert [o.name for o in ort.InferenceSession(str(model)).get_outputs()][-1] == "other_bird"
    record = json.loads((run.run_dir / "config.json").read_text())
    assert record["fast_head"]["other_bird_photos"] == 24 and record["calibration"]["other_pass"] == OTHER_BIRD_PASS
    assert "other bird" in (run.run_dir / "MODEL_CARD.md").read_text()
    settings = Settings(bird_threshold=0.0)  # generated blobs are not ImageNet birds: look past the gate
    predictor = Predictor(model, settings=settings)
    assert predictor.info()["other_bird"]["photos"] == 24
    unseen = sorted((others / "test").rglob("*.jpg"))
    known = sorted((shared_bird_dataset / "test").rglob("*.jpg"))
    predictor.config = replace(predictor.config, species_threshold=0.5)  # 1.0 on 48 photos: see the class's rule
    assert [a.verdict for a in predictor.predict_batch(unseen)] == ["unsure"] * len(unseen)
    species_mass = predictor.run(np.stack([predictor.preprocess(p) for p in unseen]))[0].sum(1)  # 1 - P(other)
    assert species_mass.max() < 0.5
    species_mass = predictor.run(np.stack([predictor.preprocess(p) for p in known]))[0].sum(1)
    assert np.median(species_mass) > 0.5 and species_mass.max() <= 1.0 + 1e-9
    answers = predictor.predict_batch(known)
    assert np.mean([a.label == normalize_label(p.parent.name) for a, p in zip(answers, known)]) >= 0.75
    assert np.mean([a.verdict == "species" for a in answers]) >= 0.5  # the rule holds back about 20% of them
    int8 = tmp_path / "int8.onnx"
    quantize_images(model, int8, shared_bird_dataset / "train", limit=16, evaluate=8)
    quantized = Predictor(int8, settings=settings)
    assert quantized.other_bird == predictor.other_bird
    assert [a.verdict for a in quantized.predict_batch(unseen)] == ["unsure"] * len(unseen)


def _fitted_run(data, tmp_path):
    """A head-only TrainingRun on `data` with three generated other species, its head fitted."""
    pytest.importorskip("fastai")
    from birdclf.data.synthetic import make_kaggle_quirks
    from birdclf.training.trainer import TrainConfig, TrainingRun

    others = make_kaggle_quirks(tmp_path / "others", per_split={"train": 4})
    run = TrainingRun(TrainConfig(data=str(data), arch="tf_efficientnet_lite0", epochs=0, bs=8, input_size=64,
                                  fast_head=True, head_epochs=3, num_workers=0, out=str(tmp_path / "runs"),
                                  name="run", other_birds=str(others)))
    run.fit_head_on_features()
    return run


@pytest.mark.slow
def test_a_resumed_run_keeps_its_other_bird_class(shared_bird_dataset, tmp_path):
    """A run that failed after fitting keeps the other-bird class beside its weights; `birdclf export RUN`
    (TrainingRun.resume) exports it with the class and its rule."""
    import onnxruntime as ort
    import torch

    from birdclf.training.trainer import TrainingRun

    run = _fitted_run(shared_bird_dataset, tmp_path)
    run.save_trained()
    again = TrainingRun.resume(run.run_dir)
    assert torch.equal(again.learn.other_bird.weight, run.learn.other_bird.weight)
    again.finish()
    names = [o.name for o in ort.InferenceSession(str(run.run_dir / "model.onnx")).get_outputs()]
    assert names[-1] == "other_bird"
    assert json.loads((run.run_dir / "config.json").read_text())["calibration"]["other_threshold"] is not None


@pytest.mark.slow
def test_a_head_trained_further_drops_its_stale_other_bird_class(shared_bird_dataset, tmp_path, caplog):
    """A notebook that trains the head further after `fit_head_on_features` (without the other-bird photos): the
    class would answer on layers that moved, so calibration drops it and says so."""
    import torch

    run = _fitted_run(shared_bird_dataset, tmp_path)
    with torch.no_grad():
        run.learn.model[1][-1].weight.mul_(1.5)  # as if fitted further
    calibration = run.calibrate()
    assert run.learn.other_bird is None and calibration.other_threshold is None
    assert "other_bird" not in run.learn.birdclf_config.extra
    assert run.record["other_bird"].startswith("dropped") and "without that class" in caplog.text


def test_int8_report_counts_the_other_bird_rule():
    """The INT8 report's `species kept` decides with the other-bird rule, as the Predictor does."""
    from birdclf.training.second_look import species_kept

    logits = np.array([[6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    bird = np.array([0.9, 0.9])
    reference = [logits, bird, np.zeros((2, 4, 4)), np.array([[-6.0], [3.0]])]  # row 1: other-bird class high
    moved = [logits, bird, np.zeros((2, 4, 4)), np.array([[3.0], [3.0]])]
    rule = OtherBird(threshold=0.02)  # P(other) of a logit 3 beside a species' 6: 0.047
    assert species_kept(reference, reference, 1.0, 0.5, 0.5, rule) == 1.0
    assert species_kept(reference, moved, 1.0, 0.5, 0.5, rule) == 0.0  # row 0 now held back
    assert species_kept(reference, moved, 1.0, 0.5, 0.5) == 1.0  # without the rule both rows stay species
