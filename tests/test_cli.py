"""The birdclf command line, run as a real process."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import make_image


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "birdclf", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=300)


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, fmt in enumerate(["JPEG", "PNG"]):
        path = tmp_path / f"img{i}.{fmt.lower()}"
        path.write_bytes(make_image(seed=i, fmt=fmt))
        paths.append(str(path))
    return paths


def test_predict_table_json_csv(tiny_onnx, images):
    out = run("predict", *images, "--model", str(tiny_onnx), "--top-k", "2")
    assert out.returncode == 0 and images[0] in out.stdout and "%" in out.stdout
    out = run("predict", *images, "--model", str(tiny_onnx), "--json")
    data = json.loads(out.stdout)
    assert [d["image"] for d in data] == images and len(data[0]["top_k"]) == 3
    out = run("predict", *images, "--model", str(tiny_onnx), "--csv", "--top-k", "2")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 4 and rows[0]["rank"] == "1"


def test_predict_says_not_a_bird(starter_onnx, tmp_path):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    cat = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(cat)
    out = run("predict", str(cat), "--model", str(starter_onnx))
    assert out.returncode == 0 and "may not be a bird" in out.stdout


def test_bad_image_is_reported_and_others_still_predicted(tiny_onnx, images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out = run("predict", images[0], str(bad), "--model", str(tiny_onnx), "--json")
    assert out.returncode == 1 and "bad.jpg" in out.stderr and "Traceback" not in out.stderr
    assert len(json.loads(out.stdout)) == 1


def test_missing_model_is_one_clear_line(tmp_path, images):
    out = run("predict", images[0], env={"BIRDCLF_HOME": str(tmp_path), "BIRDCLF_MODEL": ""})
    assert out.returncode == 2 and "birdclf starter" in out.stderr and "Traceback" not in out.stderr


def test_starter_keeps_an_existing_file(starter_onnx):
    before = starter_onnx.stat().st_mtime_ns
    out = run("starter", "--out", str(starter_onnx))
    assert out.returncode == 0 and "already" in out.stdout and starter_onnx.stat().st_mtime_ns == before




def test_predict_shows_the_verdict(starter_onnx, tmp_path):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    cup = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(cup)
    out = run("predict", str(cup), "--model", str(starter_onnx), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["verdict"] == "not_a_bird"
    out = run("predict", str(cup), "--model", str(starter_onnx), "--csv")
    assert list(csv.DictReader(io.StringIO(out.stdout)))[0]["verdict"] == "not_a_bird"


@pytest.mark.parametrize("module,extra", [("fastapi", "serve"), ("uvicorn", "serve"), ("voila", "app"),
                                          ("torch", "train")])
def test_a_command_without_its_extra_names_the_extra(monkeypatch, capsys, module, extra):
    """`birdclf serve` after installing only [train] (as the notebooks do) says what to install: no traceback."""
    import birdclf.cli as cli
    import birdclf.serving.server as server

    def missing(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setattr(server, "serve", missing)
    assert cli.main(["serve"]) == 2
    assert f"pip install 'birdclf[{extra}]'" in capsys.readouterr().err


def _train_config(*flags: str):
    from dataclasses import fields

    from birdclf.cli import build_parser
    from birdclf.training.cli import _train_config
    from birdclf.training.trainer import TrainConfig

    args = build_parser().parse_args(["train", "--data", "birds", *flags])
    return _train_config(args), {f.name for f in fields(TrainConfig)}, vars(args)


def test_train_flags_are_the_config_fields():
    """Every TrainConfig field is a flag (added in one place); the flags users already script keep working."""
    config, names, args = _train_config("--arch", "resnet18", "--epochs", "0", "--fast-head", "--train-bn-stats",
                                        "--no-pretrained", "--no-onnx", "--precision", "bf16", "--lr", "0.01",
                                        "--distributed", "--no-evaluate", "--min-scale", "0.5", "--split", "random")
    assert names <= set(args)
    assert (config.arch, config.epochs, config.fast_head, config.freeze_bn, config.pretrained, config.onnx) == (
        "resnet18", 0, True, False, False, False)
    assert (config.precision, config.lr, config.distributed, config.evaluate, config.min_scale, config.split) == (
        "bf16", 0.01, True, False, 0.5, "random")
    recipe, _, _ = _train_config()
    assert recipe.freeze_bn and recipe.onnx and recipe.patience is None  # flags not given keep the recipe's values


def test_a_train_flag_with_a_bad_value_is_refused(capsys):
    from birdclf.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "birds", "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
