"""Run folders: the Run object, and runs saved by birdclf 0.1 (flat package) still load after the move."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, make_image

pytest.importorskip("fastai")

OLD_RUN = ROOT / "tests" / "fixtures" / "run-v0.1"  # made by the 0.1 code (git e9028bd): test_efficientnet, 32 px


def test_the_fixture_really_pickles_the_old_paths():
    import re
    import zipfile

    archive = zipfile.ZipFile(OLD_RUN / "export.pkl")
    data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    old = set(re.findall(rb"(birdclf\.[\w.]+)\n(\w+)", data))
    assert (b"birdclf.loaders", b"BirdImage") in old and (b"birdclf.training", b"top5_accuracy") in old


def test_old_run_loads_predicts_and_exports(tmp_path):
    from birdclf.serving.predictor import Predictor
    from birdclf.training.runs import MOVED, OLD_MODULES, open_run

    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    run = open_run(run_dir)
    assert run.arch == "test_efficientnet" and run.labels == ["BLUE BUNTING", "GREEN & BLUE JAY", "RED CARDINAL"]
    learn = run.learner()
    assert learn.birdclf_config.temperature == 1.0 and dict(learn.birdclf_config.card) == {}  # fields added later
    image = tmp_path / "bird.jpg"
    image.write_bytes(make_image(72, 60))
    _, _, probs = learn.predict(image)
    assert probs.shape == (3,)
    out = subprocess.run([sys.executable, "-m", "birdclf", "export", str(run_dir), "--out", str(tmp_path / "m.onnx")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["top1_agreement"] == 1.0
    served = Predictor(tmp_path / "m.onnx").predict(image, top_k=3)
    assert np.allclose(sorted(t["probability"] for t in served.top_k), np.sort(probs.numpy()), atol=1e-4)
    for (old_module, name), new_module in MOVED.items():  # every remapped name exists where the map says
        __import__(new_module)
        assert hasattr(sys.modules[new_module], name), (old_module, name)
    for old in OLD_MODULES:  # and no old flat module came back as a file
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), old


def test_run_object_reads_the_record(tmp_path):
    from birdclf.errors import BirdclfError
    from birdclf.training.runs import open_run

    run = open_run(OLD_RUN)
    assert run.data.endswith("data") and run.config["input_size"] == 32 and run.name == "run-v0.1"
    assert "test_efficientnet" in repr(run)
    with pytest.raises(BirdclfError, match="not a run folder"):
        open_run(tmp_path)
