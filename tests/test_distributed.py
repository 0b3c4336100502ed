"""`birdclf train --distributed` under `accelerate launch`: two real CPU processes (torchrun, gloo) train one run."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastai")

from birdclf.training.distributed import ONE_PROCESS, Processes, processes  # noqa: E402
from tests.conftest import make_bird_dataset, make_image  # noqa: E402


def test_one_process_runs_everything_itself():
    procs = processes(False)
    assert (procs.rank, procs.world, procs.main) == (0, 1, True)
    assert procs.shared(lambda: 41 + 1) == 42
    with procs.alone():
        assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] != "1"


def test_alone_hides_the_other_processes_from_fastai(monkeypatch):
    """fastai gathers every batch across processes when WORLD_SIZE > 1: work on the main process alone sees 1."""
    from fastai.torch_core import num_distrib

    monkeypatch.setenv("WORLD_SIZE", "2")
    with Processes(0, 2).alone():
        assert num_distrib() == 1
    assert num_distrib() == 2


def test_distributed_with_one_process_says_how_to_start_several(caplog, monkeypatch):
    pytest.importorskip("accelerate")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING, logger="birdclf"):
        procs = processes(True)
    assert procs.world == 1 and ONE_PROCESS in caplog.text and "--multi_gpu --num_processes" in caplog.text


def test_body_batchnorm_stays_frozen_inside_a_parallel_wrapper():
    """fastai wraps the model in DistributedDataParallel while fitting: the callback reaches the body through it."""
    from torch import nn

    from birdclf.training.callbacks import FreezeBodyBatchNorm

    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.Linear(4, 2))
    wrapped = nn.DataParallel(model)  # the same `.module` as DistributedDataParallel, without a process group
    wrapped.train()
    callback = FreezeBodyBatchNorm()
    callback.learn = SimpleNamespace(model=wrapped)
    callback.before_train()
    assert not model[0][1].training and model[1].training


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_one_run_that_exports_and_serves(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with no GPU: torchrun starts two processes on gloo. They
    fit one model (fastai's DistributedTrainer, the body's BatchNorm frozen through the DDP wrapper); the main one
    alone runs lr_find and the cached-feature head, writes the one run folder, calibrates, evaluates and exports."""
    pytest.importorskip("accelerate")
    import torch
    from fastai.learner import load_learner
    from timm.layers import BatchNormAct2d

    from birdclf.serving.predictor import Predictor

    make_bird_dataset(tmp_path / "birds", {"train": 12, "valid": 4, "test": 4})
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         "-m", "birdclf", "train", "--data", "birds", "--out", "runs", "--arch", "tf_efficientnet_lite0",
         "--epochs", "1", "--head-epochs", "3", "--lr-find-iters", "10", "--bs", "8", "--input-size", "64",
         "--num-workers", "0", "--distributed"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-5000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # one run folder, not one per process
    run = runs[0]
    assert Path(json.loads(out.stdout)["run_dir"]) == run  # only the main process printed its result
    record = json.loads((run / "config.json").read_text())
    assert record["processes"] == 2 and record["lr"] > 0 and "lr_find" in record
    history = (run / "history.csv").read_text().splitlines()
    assert sum(line.startswith("epoch") for line in history) == 1 and len(history) == 2  # one writer
    # BatchNorm stayed timm's BatchNormAct2d (fastai's sync_bn would turn it into SyncBatchNorm without activation)
    model = load_learner(run / "export.pkl").model
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert sum(isinstance(m, BatchNormAct2d) for m in model.modules()) > 10
    predictor = Predictor(run / "model.onnx")
    species = (run / "labels.txt").read_text().splitlines()
    assert list(predictor.labels) == species and len(species) == 3
    assert predictor.predict(make_image(96, 96)).label in species


def test_accelerates_own_mixed_precision_stays_off(caplog, monkeypatch):
    """`accelerate config` may have saved fp16: Accelerate would then wrap the model's forward in its autocast for
    good (into export.pkl and the ONNX export); birdclf's --precision does mixed precision instead."""
    pytest.importorskip("accelerate")
    from birdclf.training.distributed import _trainer

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with caplog.at_level(logging.WARNING, logger="birdclf"):
        trainer = _trainer()
    assert trainer.accelerator.mixed_precision == "no" and "--mixed_precision fp16 is ignored" in caplog.text


def test_compare_refuses_distributed(tmp_path):
    from birdclf.errors import BirdclfError
    from birdclf.training.compare import compare_architectures
    from birdclf.training.trainer import TrainConfig

    with pytest.raises(BirdclfError, match="--distributed is for `birdclf train`"):
        compare_architectures(TrainConfig(data=str(tmp_path), distributed=True), ["tf_efficientnet_lite0"])


def test_distributed_without_accelerate_names_the_extra(monkeypatch):
    from birdclf.errors import BirdclfError

    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(BirdclfError, match=r"pip install 'birdclf\[dist\]'"):
        processes(True)
