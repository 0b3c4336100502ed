"""The bird gate of trained models: a model trained from the offline pretrained weights and exported keeps a bird
output; with the body frozen it equals the starter's; calibration and card travel in the ONNX file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastai")

from birdclf.serving.predictor import Predictor  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head_only_run(shared_bird_dataset, tmp_path_factory):
    """Head only (body frozen) at the starter's own input size: the gate must then be exactly the starter's."""
    from birdclf.training.trainer import TrainConfig, train

    cfg = TrainConfig(data=str(shared_bird_dataset), arch="tf_efficientnet_lite0", epochs=0, bs=8, fast_head=True,
                      head_epochs=3, num_workers=0, out=str(tmp_path_factory.mktemp("runs")), name="gated")
    return train(cfg)


def test_trained_model_flags_non_birds_like_the_starter(head_only_run, starter_onnx):
    data = pytest.importorskip("skimage.data")
    model = Predictor(head_only_run.run_dir / "model.onnx")
    starter = Predictor(starter_onnx)
    assert model.has_bird_signal
    for name in ("chelsea", "coffee", "astronaut"):
        image = Image.fromarray(getattr(data, name)())
        ours, theirs = model.predict(image), starter.predict(image)
        assert ours.is_bird is False and ours.verdict == "not_a_bird", name
        assert abs(ours.bird_probability - theirs.bird_probability) < 1e-4, name  # frozen body: the same gate


def test_calibration_and_card_are_stored_and_reloaded(head_only_run, tmp_path):
    run_dir = head_only_run.run_dir
    record = json.loads((run_dir / "config.json").read_text())
    cal = record["calibration"]
    model = Predictor(run_dir / "model.onnx")
    assert model.config.temperature == cal["temperature"] and model.config.species_threshold == cal["species_threshold"]
    assert model.bird_threshold == cal["bird_threshold"]
    assert model.config.card["abstention"]["temperature"] == cal["temperature"]
    assert (run_dir / "MODEL_CARD.md").read_text().startswith("# Model card: birdclf-tf_efficientnet_lite0")
    out = subprocess.run([sys.executable, "-m", "birdclf", "export", str(run_dir), "--out",
                          str(tmp_path / "again.onnx")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    again = Predictor(tmp_path / "again.onnx")  # re-exported from export.pkl: calibration, card and gate kept
    assert again.config.temperature == model.config.temperature and again.has_bird_signal
    assert again.config.card == model.config.card


def test_int8_copy_keeps_the_verdicts(head_only_run, shared_bird_dataset, tmp_path):
    out = subprocess.run([sys.executable, "-m", "birdclf", "quantize", str(head_only_run.run_dir / "model.onnx"),
                          "--out", str(tmp_path / "int8.onnx"), "--calibration", str(shared_bird_dataset / "train"),
                          "--limit", "16", "--evaluate", "20"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "held-out" in out.stdout and "accuracy on labels" in out.stdout and "as served, with the fp32" in out.stdout
    int8 = Predictor(tmp_path / "int8.onnx")
    assert int8.has_bird_signal and int8.config.card["int8"]["held_out"] is True and int8.second_look is not None
    card = int8.config.card["int8"]
    assert card["second_look"] is True and card["served_agreement"] >= card["top1_agreement"]
    image = next((shared_bird_dataset / "test" / "RED  CARDINAL").glob("*.jpg"))
    fp32 = Predictor(head_only_run.run_dir / "model.onnx").predict(image)
    assert np.isclose(int8.predict(image).bird_probability, fp32.bird_probability, atol=0.05)


def test_fine_tuned_model_gets_the_fixed_gate(shared_bird_dataset, starter_onnx, tmp_path):
    """Once the body moved, the gate is the starter's frozen network on the same input: its figures, exactly."""
    data = pytest.importorskip("skimage.data")
    from birdclf.training.trainer import TrainConfig, train

    cfg = TrainConfig(data=str(shared_bird_dataset), arch="tf_efficientnet_lite0", epochs=1, freeze_epochs=0,
                      lr=1e-4, bs=8, fast_head=True, head_epochs=2, num_workers=0, out=str(tmp_path), name="tuned",
                      evaluate=False, patience=None)
    result = train(cfg)
    assert json.loads((result.run_dir / "config.json").read_text())["gate"] == "FixedGate"
    model, starter = Predictor(result.run_dir / "model.onnx"), Predictor(starter_onnx)
    for name in ("chelsea", "coffee"):
        image = Image.fromarray(getattr(data, name)())
        assert abs(model.predict(image).bird_probability - starter.predict(image).bird_probability) < 1e-4
