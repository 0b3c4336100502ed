"""ONNX export: eval mode, names, dynamic batch, checker, parity; INT8 quantisation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from birdclf.config import ModelConfig
from birdclf.constants import INPUT_NAME, INPUT_PRECISE, METADATA_KEY, OUTPUT_LOGITS, OUTPUT_OTHER
from birdclf.errors import ExportError, ModelFormatError
from birdclf.serving.other_bird import OtherBird
from birdclf.serving.predictor import Predictor
from birdclf.serving.second_look import SecondLook
from birdclf.training.export import export_onnx, quantize_int8, read_model_config, set_metadata, verify_parity


def test_export_is_checked_named_and_dynamic(tiny_onnx, tiny_config):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [OUTPUT_LOGITS]
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # symbolic batch
    assert read_model_config(tiny_onnx) == tiny_config
    assert any(p.key == METADATA_KEY for p in model.metadata_props)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 9):
        out = session.run(None, {INPUT_NAME: np.zeros((batch, 3, 32, 32), np.float32)})[0]
        assert out.shape == (batch, 3)


def test_export_reports_parity(tmp_path, tiny_torch_model, tiny_config):
    report = export_onnx(tiny_torch_model, tmp_path / "m.onnx", tiny_config)
    assert report.max_abs_diff < 1e-4 and report.top1_agreement == 1.0 and report.size_bytes > 0


def test_export_puts_model_in_eval_mode(tmp_path, tiny_config):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.9), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).train()
    export_onnx(model, tmp_path / "m.onnx", tiny_config)  # dropout would break parity if left in train mode
    assert not model.training


def test_parity_failure_is_loud(tmp_path, tiny_onnx, tiny_torch_model):
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3)).eval()
    batch = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    verify_parity(tiny_torch_model, tiny_onnx, batch)
    with pytest.raises(ExportError, match="parity failed"):
        verify_parity(other, tiny_onnx, batch)


def test_labels_must_fit_outputs(tmp_path, tiny_torch_model):
    config = ModelConfig(model_name="m", labels=["a", "b"], input_size=32, resize_size=36)
    with pytest.raises(ExportError, match="2 labels"):
        export_onnx(tiny_torch_model, tmp_path / "m.onnx", config)
    assert not (tmp_path / "m.onnx").exists()


def test_int8_quantisation(tmp_path, tiny_onnx):
    calibration = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    report = quantize_int8(tiny_onnx, tmp_path / "int8.onnx", calibration)
    assert 0.0 <= report.top1_agreement <= 1.0 and report.num_images == 16
    predictor = Predictor(tmp_path / "int8.onnx")
    assert predictor.config.version.endswith("-int8") and predictor.labels == read_model_config(tiny_onnx).labels
    with pytest.raises(ExportError, match="overwrite"):
        quantize_int8(tiny_onnx, tiny_onnx, calibration)


def _with_rule(src, dst, rule: SecondLook):
    """A copy of an INT8 file whose metadata carries another second-look rule."""
    dst.write_bytes(src.read_bytes())
    config = read_model_config(src)
    set_metadata(dst, ModelConfig.from_dict(config.to_dict() | {"extra": {"second_look": rule.to_dict()}}))
    return dst


def test_int8_file_holds_its_fp32_model_for_a_second_look(tmp_path, tiny_onnx):
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    batch = rng.standard_normal((24, 3, 32, 32)).astype(np.float32)
    report = quantize_int8(tiny_onnx, tmp_path / "int8.onnx", calibration, batch)
    plain = quantize_int8(tiny_onnx, tmp_path / "plain.onnx", calibration, batch, second_look=False)
    model = onnx.load(str(tmp_path / "int8.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [INPUT_NAME, INPUT_PRECISE]
    assert [i.name for i in onnx.load(str(tmp_path / "plain.onnx")).graph.input] == [INPUT_NAME]
    assert report.second_look and 0.0 <= report.rechecked <= 1.0 and report.served_agreement >= report.top1_agreement
    assert not plain.second_look and plain.size_bytes < report.size_bytes

    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: batch})[0]
    int8 = ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {INPUT_NAME: batch, INPUT_PRECISE: np.array(True)})[0], fp32)
    assert np.array_equal(session.run(None, {INPUT_NAME: batch})[0], int8.run(None, {INPUT_NAME: batch})[0])

    served = Predictor(tmp_path / "int8.onnx")
    assert served.second_look == SecondLook() and served.info()["second_look"] is True
    assert Predictor(tmp_path / "plain.onnx").second_look is None
    reference, alone = Predictor(tiny_onnx).run(batch)[0], Predictor(tmp_path / "plain.onnx").run(batch)[0]
    always = Predictor(_with_rule(tmp_path / "int8.onnx", tmp_path / "always.onnx", SecondLook(2.0, 0.0, 0.0)))
    never = Predictor(_with_rule(tmp_path / "int8.onnx", tmp_path / "never.onnx", SecondLook(0.0, 0.0, 0.0)))
    assert np.allclose(always.run(batch)[0], reference, atol=1e-6)  # every row looked at again: fp32's answers
    assert np.allclose(never.run(batch)[0], alone, atol=1e-6) and not np.allclose(alone, reference, atol=1e-6)
    assert len(served.predict_arrays(list(batch[:3]))[0].top_k) == 3  # the served path answers


def test_second_look_picks_the_answers_int8_noise_could_change():
    rule = SecondLook(margin=0.1, below_species=0.05, bird_band=0.02)
    probs = np.array([[0.50, 0.45, 0.05],   # top two 0.05 apart
                      [0.90, 0.05, 0.05],   # sure, far from every threshold
                      [0.78, 0.12, 0.10],   # just under the species threshold 0.8: may be species in fp32
                      [0.70, 0.20, 0.10],   # clearly unsure
                      [0.95, 0.03, 0.02]])  # sure, but P(bird) at the bird threshold
    bird = np.array([0.9, 0.9, 0.9, 0.9, 0.51])
    assert rule.rows(probs, bird, 0.8, 0.5).tolist() == [True, False, True, False, True]
    assert rule.rows(probs, None, 0.8, 0.5).tolist() == [True, False, True, False, False]
    assert SecondLook.from_config(None) is None and SecondLook.from_config(rule.to_dict()) == rule
    # a model with an other-bird class: P(other) near its threshold, or near the top species, is looked at again
    probs = np.array([[0.90, 0.03, 0.02]] * 4 + [[0.60, 0.15, 0.10]])
    # far under the threshold 0.3; just under it (INT8 could push it over); above it with a sure top-1 (fp32 may
    # answer `species`); beside the top-1; above it with an unsure top-1 (held back either way)
    other = np.array([0.05, 0.2, 0.45, 0.92, 0.5])
    at = OtherBird(0.3)
    assert rule.rows(probs, None, 0.8, 0.5, other, at).tolist() == [False, True, True, True, False]
    assert not rule.rows(probs, np.full(5, 0.4), 0.8, 0.5, other, at)[2]  # not a bird: the rule does not decide
    assert not rule.rows(probs, None, 0.8, 0.5).any()  # without the class: none of these
    with pytest.raises(ModelFormatError, match="second-look rule"):
        SecondLook.from_config({"margin": "wide"})


class _WithOtherBird(torch.nn.Module):
    """The tiny model plus an 'other bird' output, named as GatedModel names its outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.output_names = [OUTPUT_LOGITS, OUTPUT_OTHER]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, logits.mean(-1)


def test_an_other_bird_output_and_its_rule_go_together(tmp_path, tiny_torch_model, tiny_config):
    """An exported other-bird output the Predictor could not apply (no rule), or a rule without the output, is
    refused before anything is written."""
    import dataclasses

    rule = {"threshold": 0.3, "pass_rate": 0.8, "photos": 10}
    with_rule = dataclasses.replace(tiny_config, extra={"other_bird": rule})
    with pytest.raises(ExportError, match="other-bird rule"):
        export_onnx(_WithOtherBird(tiny_torch_model), tmp_path / "a.onnx", tiny_config)
    with pytest.raises(ExportError, match="other-bird rule"):
        export_onnx(tiny_torch_model, tmp_path / "b.onnx", with_rule)
    assert not list(tmp_path.glob("*.onnx"))
    export_onnx(_WithOtherBird(tiny_torch_model), tmp_path / "c.onnx", with_rule)
    assert Predictor(tmp_path / "c.onnx").info()["other_bird"]["threshold"] == 0.3
