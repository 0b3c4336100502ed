"""The GPU recipe (notebook defaults on Colab: efficientnet_b3a, mixed precision, fine_tune with freeze/unfreeze)
rehearsed on CPU with random init on tiny data, through the same code path, to the served ONNX model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastai")

from birdclf.constants import GPU_ARCH  # noqa: E402

pytestmark = pytest.mark.slow


def test_serving_config_equals_timms_eval_transform(tmp_path):
    """What the exported model's metadata says to do equals timm's own eval transform for the architecture."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from birdclf.serving.imaging import preprocess
    from birdclf.training.learner import arch_config
    from tests.conftest import make_image

    config = arch_config(GPU_ARCH, ["a", "b"])
    data_config = resolve_data_config({}, model=timm.create_model(GPU_ARCH, pretrained=False, num_classes=0))
    assert (config.input_size, config.interpolation) == (data_config["input_size"][-1], data_config["interpolation"])
    assert config.mean == tuple(data_config["mean"]) and config.std == tuple(data_config["std"])
    transform = create_transform(**data_config)
    for size in ((640, 480), (333, 517), (300, 300)):
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        path.write_bytes(make_image(*size, fmt="PNG", seed=size[0]))
        ours = preprocess(path, config)
        theirs = transform(Image.open(path).convert("RGB")).numpy()
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5


def test_b3a_recipe_trains_with_mixed_precision_and_serves(shared_bird_dataset, tmp_path):
    import torch

    from birdclf.serving.predictor import Predictor
    from birdclf.training.callbacks import DeviceMixedPrecision
    from birdclf.training.runs import run_history
    from birdclf.training.trainer import TrainConfig, TrainingRun

    cfg = TrainConfig(data=str(shared_bird_dataset), arch=GPU_ARCH, pretrained=False, epochs=1, freeze_epochs=1,
                      bs=6, input_size=96, lr_find_iters=20, num_workers=0, precision="bf16", out=str(tmp_path),
                      name="b3a", patience=None)
    run = TrainingRun(cfg)
    assert any(isinstance(cb, DeviceMixedPrecision) for cb in run.learn.cbs)
    from fastai.callback.core import Callback

    seen, trainable = [], []

    class Watch(Callback):
        def before_epoch(self):
            params = [p for p in self.learn.model[0].parameters() if p.ndim > 1]  # conv weights, not BN
            trainable.append(sum(p.requires_grad for p in params) / len(params))

    hook = run.learn.model[1][-1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    watch = Watch()
    run.learn.add_cb(watch)
    run.fit(lr=1e-3)  # fastai fine_tune: freeze, one epoch, unfreeze, one epoch
    run.learn.remove_cb(watch)
    hook.remove()
    assert torch.bfloat16 in seen  # autocast really ran on CPU
    assert trainable == [0.0, 1.0]  # the body was frozen for the first epoch, then unfrozen
    history = run_history(run.run_dir)
    assert len(history) == 2 and history["train_loss"].dtype.kind == "f"  # frozen epoch + unfrozen epoch
    result = run.finish()
    assert not any(isinstance(cb, DeviceMixedPrecision) for cb in run.learn.cbs)  # exported in fp32
    record = result.run_dir / "config.json"
    assert '"precision": "bf16"' in record.read_text()
    predictor = Predictor(result.run_dir / "model.onnx")
    assert predictor.config.arch == GPU_ARCH and predictor.config.input_size == 96
    image = next((shared_bird_dataset / "test" / "BLUE BUNTING").glob("*.jpg"))
    _, _, probs = result.learn.predict(image)
    calibrated = probs.double().numpy() ** (1 / predictor.config.temperature)  # the run's fitted temperature
    served = predictor.predict(image, top_k=3)
    assert np.allclose(sorted(t["probability"] for t in served.top_k), np.sort(calibrated / calibrated.sum()),
                       atol=1e-4)


def test_the_gpu_check_runs_its_whole_path_in_smoke_mode(tmp_path):
    """bench/gpu_check.sh without CUDA: train, export, verify and serve, with every figure the GPU run reports."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env={"PYTHON": sys.executable,
                                                                            "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["mode"] == "smoke (cpu)" and len(figures["epochs"]) == 2  # a frozen epoch, an unfrozen one
    assert all(e["train_images"] == figures["images"]["train"] and e["seconds"] > 0 for e in figures["epochs"])
    assert figures["images_per_s"] > 0 and 0 <= figures["test_top1"] <= 1
    assert figures["onnx"]["top1_agreement"] == 1.0 and figures["onnx"]["max_abs_diff"] < 1e-3
    assert figures["served_answer"]["verdict"] in ("species", "unsure", "not_a_bird")
    assert "s_per_epoch" in done.stdout and "test_top1" in done.stdout


def _tiny_run(tmp_path, shared_bird_dataset, **overrides):
    from birdclf.training.trainer import TrainConfig, TrainingRun

    cfg = TrainConfig(**({"data": str(shared_bird_dataset), "arch": "test_efficientnet", "pretrained": False,
                          "epochs": 1, "freeze_epochs": 1, "bs": 6, "input_size": 64, "num_workers": 0,
                          "out": str(tmp_path), "name": "tiny"} | overrides))
    return TrainingRun(cfg)


def test_a_learner_given_to_fp16_by_the_user_gets_one_mixed_precision_not_two(tmp_path, shared_bird_dataset):
    from fastai.callback.fp16 import MixedPrecision

    from birdclf.training.callbacks import DeviceMixedPrecision

    run = _tiny_run(tmp_path, shared_bird_dataset, precision="bf16")
    ours = next(cb for cb in run.learn.cbs if isinstance(cb, DeviceMixedPrecision))
    run.learn.to_fp16()  # what a fastai user does in a notebook
    ours.before_fit()
    assert [type(cb) for cb in run.learn.cbs if isinstance(cb, MixedPrecision)] == [MixedPrecision]


@pytest.mark.parametrize("deterministic", [False, True])
def test_on_a_gpu_seeding_keeps_cudnn_benchmark_and_trains_channels_last(tmp_path, shared_bird_dataset,
                                                                          monkeypatch, deterministic):
    """The GPU set-up, as seen with CUDA reported present: cudnn.benchmark on unless a repeatable run is asked for,
    and the ChannelsLast callback in place."""
    import torch
    from fastai.callback.channelslast import ChannelsLast

    from birdclf.training import trainer

    monkeypatch.setattr(trainer, "_on_gpu", lambda: True)  # the data stay on the CPU (fastai's own device check)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    run = _tiny_run(tmp_path, shared_bird_dataset, precision="bf16", deterministic=deterministic,
                    name=f"gpu-{deterministic}")
    assert torch.backends.cudnn.benchmark is (not deterministic)
    assert torch.backends.cudnn.deterministic is deterministic
    assert any(isinstance(cb, ChannelsLast) for cb in run.learn.cbs)


def test_early_stopping_watches_the_valid_loss_and_is_off_by_default(tmp_path, shared_bird_dataset):
    from fastai.callback.tracker import EarlyStoppingCallback

    assert not any(isinstance(cb, EarlyStoppingCallback) for cb in _tiny_run(tmp_path, shared_bird_dataset).callbacks())
    stops = [cb for cb in _tiny_run(tmp_path, shared_bird_dataset, patience=2, name="p").callbacks()
             if isinstance(cb, EarlyStoppingCallback)]
    assert len(stops) == 1 and stops[0].monitor == "valid_loss"
