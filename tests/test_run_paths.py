"""Runs from any working directory with relative --data/--out, and a run that fails after training keeps its
weights and is finished by `birdclf export RUN`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastai")

from birdclf.errors import BirdclfError  # noqa: E402
from birdclf.serving.predictor import Predictor  # noqa: E402
from birdclf.training.trainer import TrainConfig, TrainingRun  # noqa: E402

pytestmark = pytest.mark.slow
TINY = ["--arch", "tf_efficientnet_lite0", "--epochs", "0", "--fast-head", "--head-epochs", "3", "--bs", "8",
        "--input-size", "64", "--num-workers", "0"]


def _birdclf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "birdclf", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_config_paths_are_absolute_from_the_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(data="birds", out="runs", feature_cache="~/cache")
    assert cfg.data == str(tmp_path / "birds") and cfg.out == str(tmp_path / "runs")
    assert cfg.feature_cache == os.path.expanduser("~/cache")


def test_train_with_relative_data_and_out(shared_bird_dataset, tmp_path):
    """`birdclf train --data birds` with the default --out runs, from the folder that holds them."""
    os.symlink(shared_bird_dataset, tmp_path / "birds")
    out = _birdclf("train", "--data", "birds", "--name", "tiny", "--no-onnx", *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    assert Path(json.loads(out.stdout)["run_dir"]) == run
    assert (run / "export.pkl").is_file() and (run / "MODEL_CARD.md").is_file() and not (run / "runs").exists()
    assert json.loads((run / "config.json").read_text())["config"]["data"] == str(tmp_path / "birds")
    # evaluate and stats with relative paths too
    out = _birdclf("evaluate", "runs/tiny", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "evaluation-test" / "per_class.csv").is_file()
    out = _birdclf("data", "check", "birds", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "birds-check" / "invalid.csv").is_file()


def test_failure_after_training_keeps_the_weights_and_export_finishes(shared_bird_dataset, tmp_path, monkeypatch):
    """A valid image vanishes between fitting and calibration (a Drive hiccup): the error names `birdclf export`,
    the weights are on disk, and `birdclf export RUN` (relative) calibrates, evaluates and exports the same model."""
    import shutil

    data = tmp_path / "birds"
    shutil.copytree(shared_bird_dataset, data)
    monkeypatch.chdir(tmp_path)
    run = TrainingRun(TrainConfig(data="birds", arch="tf_efficientnet_lite0", epochs=0, fast_head=True,
                                  head_epochs=3, bs=8, input_size=64, num_workers=0, name="late"))
    run.fit_head_on_features()
    gone = run.splits["valid"][0][0]
    kept = gone.read_bytes()
    gone.unlink()
    with pytest.raises(BirdclfError, match="birdclf export .*late"):
        run.finish()
    folder = tmp_path / "runs" / "late"
    assert (folder / "models" / "trained.pth").is_file() and not (folder / "export.pkl").exists()
    assert json.loads((folder / "config.json").read_text())["failed"] == "after training"
    head = run.learn.model[1]
    expected = {k: v.clone() for k, v in head.state_dict().items()}

    gone.write_bytes(kept)
    out = _birdclf("export", "runs/late", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["onnx"]["top1_agreement"] == 1.0
    record = json.loads((folder / "config.json").read_text())
    assert "failed" not in record and record["fast_head"]["epochs"] == 3  # the training record is kept
    predictor = Predictor(folder / "model.onnx")
    assert predictor.labels == tuple(run.dls.vocab)
    from birdclf.training.runs import load_run

    finished = load_run(folder).model[1].state_dict()
    assert all(finished[k].equal(v) for k, v in expected.items())  # the trained head, not a fresh one


def _fake_colab(monkeypatch, mount):
    import types

    from tests.conftest import fake_colab

    fake_colab(monkeypatch, drive=types.SimpleNamespace(mount=mount))


def test_on_colab_drive_is_mounted_by_default_and_a_refusal_is_said(tmp_path, monkeypatch, capsys):
    from birdclf.training.notebook import setup

    mounted = []
    _fake_colab(monkeypatch, lambda where: mounted.append(where))
    monkeypatch.setattr("birdclf.training.notebook.Path", lambda p=".": tmp_path / str(p).lstrip("/"))
    env = setup(workdir=tmp_path / "work")  # MOUNT_DRIVE = None: Colab mounts
    assert mounted == ["/content/drive"] and env["colab"]

    def refuse(where):
        raise ValueError("mount failed")

    _fake_colab(monkeypatch, refuse)
    setup(workdir=tmp_path / "work")
    assert "Google Drive was not mounted (ValueError: mount failed)" in capsys.readouterr().out
    mounted.clear()
    _fake_colab(monkeypatch, lambda where: mounted.append(where))
    setup(mount_drive=False, workdir=tmp_path / "work")
    assert mounted == []


def test_setup_says_how_to_finish_a_run_that_stopped(tmp_path, capsys):
    from birdclf.training.notebook import setup, unfinished_runs

    stopped, done = tmp_path / "runs" / "stopped", tmp_path / "runs" / "done"
    for run in (stopped, done):
        (run / "models").mkdir(parents=True)
        (run / "config.json").write_text("{}")
        (run / "models" / "best.pth").write_bytes(b"w")
    (done / "export.pkl").write_bytes(b"x")
    assert unfinished_runs(tmp_path / "runs") == [stopped]
    setup(workdir=tmp_path)
    assert f"birdclf export {stopped}" in capsys.readouterr().out
