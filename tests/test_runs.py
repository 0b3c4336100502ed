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


def test_run_splits_are_the_ones_it_was_trained_on(bird_dataset, tmp_path):
    """A run trained on a random re-split of two classes is evaluated on that split, not on the folder's own."""
    from birdclf.training.runs import Run
    from birdclf.training.trainer import TrainConfig, prepare_data

    config = {"data": str(bird_dataset), "split": "random", "valid_pct": 0.2, "seed": 7, "max_classes": 2,
              "arch": "tf_efficientnet_lite0", "unknown_future_field": 1}
    run = Run(tmp_path, {"config": config})
    splits = run.splits()
    assert splits == prepare_data(TrainConfig(**{k: v for k, v in config.items() if k != "unknown_future_field"}))
    assert len({label for _, label in splits["train"]}) == 2
    moved = tmp_path / "copy"
    shutil.copytree(bird_dataset, moved)
    assert {label for _, label in run.splits(moved)["train"]} == {label for _, label in splits["train"]}


def test_recipe_and_the_unfrozen_schedule():
    from birdclf.training.trainer import CPU_EPOCHS, GPU_EPOCHS, recipe, unfrozen_schedule

    gpu, cpu = recipe("data", gpu=True), recipe("data", gpu=False, epochs=None, mini=5)
    assert (gpu.arch, gpu.epochs, gpu.fast_head) == ("efficientnet_b3a", GPU_EPOCHS, False)
    assert (cpu.arch, cpu.epochs, cpu.fast_head, cpu.mini) == ("tf_efficientnet_lite0", CPU_EPOCHS, True, 5)
    assert recipe("data", gpu=False, fast_head=False, epochs=0).fast_head is False
    schedule = unfrozen_schedule(1e-2, 10)
    assert schedule["lr_max"] == slice(5e-4, 5e-3) and schedule["pct_start"] == 0.3


def test_smoke_run_is_reused_and_links_fall_back_to_copies(tmp_path, monkeypatch, bird_dataset):
    from pathlib import Path

    from birdclf.data.layout import read_dataset
    from birdclf.data.split import make_splits, materialize
    from birdclf.training import notebook

    (tmp_path / "runs" / "smoke-x").mkdir(parents=True)
    (tmp_path / "runs" / "smoke-x" / "export.pkl").write_bytes(b"")
    monkeypatch.setattr("birdclf.training.trainer.train", lambda cfg: pytest.fail("trained again"))
    assert notebook.smoke_run(tmp_path, "smoke-x") == tmp_path / "runs" / "smoke-x"

    def no_links(self, target):
        raise OSError("Operation not supported")

    monkeypatch.setattr(Path, "symlink_to", no_links)  # Google Drive
    out = materialize(make_splits(read_dataset(bird_dataset)), tmp_path / "mini")
    copied = next((out / "train").rglob("*.jpg"))
    assert copied.is_file() and not copied.is_symlink()
