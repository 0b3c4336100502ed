"""ONNX export: eval mode, names, dynamic batch, checker, parity; INT8 quantisation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from birdclf.config import ModelConfig
from birdclf.constants import INPUT_NAME, METADATA_KEY, OUTPUT_LOGITS
from birdclf.errors import ExportError
from birdclf.serving.predictor import Predictor
from birdclf.training.export import export_onnx, quantize_int8, read_model_config, verify_parity


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
