"""The model config that travels in the ONNX metadata."""

from __future__ import annotations

import pytest

from birdclf.config import ModelConfig
from birdclf.errors import ModelFormatError


def test_round_trip_json():
    cfg = ModelConfig(model_name="m", labels=["A & B", "C  D"], input_size=300, resize_size=320, extra={"k": 1})
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg and again.labels == ("A & B", "C  D")


def test_from_timm_cfg_uses_crop_pct():
    timm_cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
                "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "architecture": "tf_efficientnet_lite0"}
    cfg = ModelConfig.from_timm(timm_cfg, ["x"], "m")
    assert (cfg.input_size, cfg.resize_size, cfg.interpolation, cfg.mean) == (224, 256, "bicubic", (0.5,) * 3)


@pytest.mark.parametrize("kwargs,words", [
    ({"labels": []}, "labels is empty"),
    ({"labels": ["a", "a"]}, "duplicates"),
    ({"labels": ["a"], "input_size": 300, "resize_size": 256}, "input_size"),
    ({"labels": ["a"], "interpolation": "magic"}, "interpolation"),
    ({"labels": ["a"], "std": (0, 1, 1)}, "std"),
])
def test_invalid_configs_are_refused(kwargs, words):
    with pytest.raises(ModelFormatError, match=words):
        ModelConfig(model_name="m", **kwargs)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"model_name": "m"}'])
def test_bad_metadata_is_a_model_format_error(text):
    with pytest.raises(ModelFormatError):
        ModelConfig.from_json(text)
