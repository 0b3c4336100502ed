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
