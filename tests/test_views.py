"""Distant views of train photos for the cached-feature head (birdclf.training.views)."""

from __future__ import annotations

import copy

import numpy as np
from PIL import Image

from birdclf.training.views import DISTANT_CROP, DISTANT_WIDTH, distant_view, write_distant_views


def _photo(path, size=(500, 375), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)
    return path


def test_a_distant_view_is_a_small_square_around_the_shrunk_photo():
    photo = Image.new("RGB", (500, 375), (200, 30, 30))
    sides = []
    for seed in range(20):
        view = distant_view(photo, np.random.default_rng(seed))
        assert view.width == view.height
        sides.append(view.width)
        centre = np.asarray(view)[view.height // 2, view.width // 2]
        assert abs(int(centre[0]) - 200) < 20 and int(centre[1]) < 60  # the photo is in the middle of the view
    low, high = DISTANT_WIDTH[0] * DISTANT_CROP[0], DISTANT_WIDTH[1] * DISTANT_CROP[1]
    assert all(low - 2 <= s <= high + 2 for s in sides) and max(sides) - min(sides) > 50  # shrunk, and varied


def test_views_are_written_once_view_major_and_kept(tmp_path):
    photos = [_photo(tmp_path / f"p{i}.jpg", seed=i) for i in range(3)]
    out = tmp_path / "views"
    first = write_distant_views(photos, out, count=2, seed=1)
    assert len(first) == 6 and len(set(first)) == 6 and all(p.exists() for p in first)
    stamps = [p.stat().st_mtime_ns for p in first]
    again = write_distant_views(list(reversed(photos)), out, count=2, seed=1)
    assert sorted(again) == sorted(first) and again[:3] == list(reversed(first[:3]))  # view-major, per photo
    assert [p.stat().st_mtime_ns for p in first] == stamps  # reused, not rendered again
    other = write_distant_views(photos, tmp_path / "other", count=2, seed=2)
    assert any(a.read_bytes() != b.read_bytes() for a, b in zip(first, other))  # the seed draws other views


def test_out_of_fold_heads_never_see_a_held_out_photos_distant_views():
    """Each view is an exact copy of its photo's features and the labels are noise: a held-out head that had
    learned the photo's own views would name it; one that had not can only guess."""
    import torch

    from birdclf.training.features import CachedFeatures, HeadFit, out_of_fold_logits

    rng = np.random.default_rng(0)
    n, dim, classes = 60, 64, 4
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    head = torch.nn.Sequential(torch.nn.Linear(dim, classes))
    fit = HeadFit(epochs=15, lr=0.05, bs=16, wd=0.0, label_smoothing=0.0, seed=0, distant_views=2)
    cached = CachedFeatures(x, y, x[:0], y[:0], False, fit, copy.deepcopy(head), x_views=np.concatenate([x, x]))
    far_x, far_y = cached.view_rows(np.arange(n) < 10)
    assert len(far_x) == 20 and (far_y == np.tile(y[:10], 2)).all()
    logits, labels = out_of_fold_logits(cached, folds=3)
    assert (labels == y).all() and (logits.argmax(1) == y).mean() < 0.5  # chance is 0.25

    leaky = CachedFeatures(x, y, x[:0], y[:0], False, fit, copy.deepcopy(head))  # the check can fail: a head that
    leaky_fit = np.concatenate([x, x, x])  # has seen the photos themselves names nearly all of them
    from birdclf.training.features import head_logits, train_head

    trained = copy.deepcopy(leaky.untrained_head)
    train_head(trained, leaky_fit, np.tile(y, 3), x[:1], y[:1], fit)
    assert (head_logits(trained, x).argmax(1) == y).mean() > 0.9


def test_a_negative_view_count_is_refused_by_name(tmp_path):
    import pytest

    from birdclf.errors import BirdclfError
    from birdclf.training.trainer import TrainConfig

    with pytest.raises(BirdclfError, match="--distant-views"):
        TrainConfig(data=str(tmp_path), fast_head=True, distant_views=-1)
