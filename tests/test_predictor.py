"""The Predictor: one inference path for every consumer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from birdclf.errors import BirdclfError, InvalidImageError, ModelFormatError, ModelNotFoundError
from birdclf.serving.predictor import Predictor, available_cpus, resolve_model_path, softmax
from tests.conftest import ROOT, make_image


def test_predict_one_and_batch_agree(tiny_onnx):
    predictor = Predictor(tiny_onnx, threads=1)
    images = [make_image(seed=s) for s in range(5)]
    batch = predictor.predict_batch(images, top_k=3)
    for image, from_batch in zip(images, batch):
        single = predictor.predict(image, top_k=3)
        assert single.top_k == from_batch.top_k
    probs = [item["probability"] for item in batch[0].top_k]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    assert {item["label"] for item in batch[0].top_k} == set(predictor.labels)
    assert batch[0].is_bird is None and batch[0].bird_probability is None  # the tiny model has no bird signal


def test_config_comes_from_the_model_file(tiny_onnx, tiny_config):
    predictor = Predictor(tiny_onnx)
    assert predictor.config == tiny_config
    assert predictor.info()["num_classes"] == 3 and predictor.info()["version"] == "7"


def test_batches_larger_than_batch_size(tiny_onnx):
    predictor = Predictor(tiny_onnx, batch_size=2)
    assert len(predictor.predict_batch([make_image(seed=s) for s in range(5)])) == 5


def test_bad_image_in_batch_names_its_position(tiny_onnx):
    predictor = Predictor(tiny_onnx)
    with pytest.raises(InvalidImageError, match="image 1"):
        predictor.predict_batch([make_image(), b"junk"])


@pytest.mark.parametrize("k", [0, -1, 51, 2.5, True])
def test_top_k_bounds(tiny_onnx, k):
    with pytest.raises(BirdclfError, match="top_k"):
        Predictor(tiny_onnx).predict(make_image(), top_k=k)


def test_top_k_larger_than_classes_is_capped(tiny_onnx):
    assert len(Predictor(tiny_onnx).predict(make_image(), top_k=10).top_k) == 3


def test_threads_setting(tiny_onnx, monkeypatch):
    assert Predictor(tiny_onnx, threads=1).session.get_session_options().intra_op_num_threads == 1
    monkeypatch.setenv("BIRDCLF_THREADS", "2")
    assert Predictor(tiny_onnx).threads == 2
    assert 1 <= available_cpus() <= 4096


def test_missing_model_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDCLF_HOME", str(tmp_path))
    monkeypatch.delenv("BIRDCLF_MODEL", raising=False)
    with pytest.raises(ModelNotFoundError, match="birdclf starter"):
        resolve_model_path()
    with pytest.raises(ModelNotFoundError, match="nope.onnx"):
        Predictor(tmp_path / "nope.onnx")


def test_env_model_is_used(tiny_onnx, monkeypatch):
    monkeypatch.setenv("BIRDCLF_MODEL", str(tiny_onnx))
    assert resolve_model_path() == tiny_onnx


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="cannot load"):
        Predictor(bad)


def test_onnx_without_birdclf_metadata(tmp_path, tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    with pytest.raises(ModelFormatError, match="not a birdclf model"):
        Predictor(plain)


def test_softmax_is_stable():
    out = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(out).all() and abs(out.sum() - 1) < 1e-12


SERVING_SIDE = ["config.py", "constants.py", "errors.py", "settings.py", "logs.py", "__init__.py", "serving"]
FORBIDDEN = ("torch", "torchvision", "fastai", "timm", "onnx", "onnxscript", "sklearn", "matplotlib", "pandas",
             "birdclf.training", "birdclf.data", "birdclf.webapp")


def _imports(path) -> set[str]:
    """Every module an import statement in `path` names (module level and inside functions), made absolute."""
    import ast

    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
    return names


def test_serving_side_imports_nothing_from_training():
    entries = [ROOT / "birdclf" / entry for entry in SERVING_SIDE]
    files = [p for entry in entries for p in (entry.rglob("*.py") if entry.is_dir() else [entry])]
    assert len(files) > 10
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p)
                                                  if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))
                 for p in files}
    assert not {k: v for k, v in offenders.items() if v}


def test_serving_at_run_time_loads_no_training_library(tiny_onnx):
    code = ("import io, sys, birdclf\n"
            "from fastapi.testclient import TestClient\n"
            "from birdclf.serving.service import create_app\n"
            "from birdclf.settings import Settings\n"
            "from PIL import Image\n"
            "buf = io.BytesIO(); Image.new('RGB', (40, 30), (200, 10, 10)).save(buf, 'PNG')\n"
            f"prediction = birdclf.Predictor({str(tiny_onnx)!r}).predict(buf.getvalue())\n"
            f"with TestClient(create_app(Settings(model={str(tiny_onnx)!r}))) as c:\n"
            "    assert c.post('/api/predict', content=buf.getvalue()).status_code == 200\n"
            "bad = [m for m in ('torch', 'fastai', 'timm', 'torchvision', 'onnx', 'sklearn') if m in sys.modules]\n"
            "assert not bad, bad\nprint('clean', prediction.label)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr
