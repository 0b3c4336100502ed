"""The real Kaggle download's layout and quirks, reproduced from generated images (birdclf.data.synthetic
.make_kaggle_quirks: the two-space PARAKETT  AUKLET folder beside valid/'s one-space one, grayscale, CMYK and
palette files named .jpg, each release's index with a misspelt path and a wrong label, the Keras model file at the
top), taken by `birdclf data check`, `birdclf train` and notebook 01 as a user would: relative paths, from the
folder the data are in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from birdclf.cli import main
from birdclf.data.synthetic import KAGGLE_VERSIONS, make_kaggle_quirks

pytest.importorskip("fastai")

ROOT = Path(__file__).resolve().parents[1]


def _json_out(text: str) -> dict:
    return json.loads(text[text.index("{"):])


@pytest.mark.parametrize("version", sorted(KAGGLE_VERSIONS))
def test_data_check_takes_every_release_as_it_comes(tmp_path, monkeypatch, capsys, caplog, version):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("birdclf.data.labels._reported", set())  # each merge is logged once per process
    make_kaggle_quirks(f"kaggle{version}", version)
    assert main(["data", "check", f"kaggle{version}", "--quarantine", "quarantine"]) == 0
    captured = capsys.readouterr()
    report = _json_out(captured.out)
    assert report["files"] == 42 and report["invalid"] == 0 and report["quarantined"] == 0  # L, CMYK, P all read
    assert report["merged_labels"] == {"PARAKETT AUKLET": ["PARAKETT  AUKLET", "PARAKETT AUKLET"]}
    assert "merged class folders 'PARAKETT  AUKLET' and 'PARAKETT AUKLET'" in caplog.text  # said in the log
    index = report["index"]
    assert index["index"] == KAGGLE_VERSIONS[version][0] and index["rows"] == 43
    assert (index["missing_files"], index["label_mismatches"], index["unlisted_files"]) == (1, 1, 0)


@pytest.mark.slow
def test_train_on_the_quirks_from_relative_paths_gives_a_model_that_serves(tmp_path, monkeypatch, capsys):
    """Trained with --data and the default --out relative to the working folder: one run folder, three species
    (the two auklet folders are one), and the model answers for a CMYK photo."""
    from birdclf.serving.predictor import Predictor

    monkeypatch.chdir(tmp_path)
    make_kaggle_quirks("kaggle525", "525")
    code = main(["train", "--data", "kaggle525", "--arch", "test_efficientnet", "--no-pretrained", "--epochs", "1",
                 "--freeze-epochs", "1", "--no-fast-head", "--bs", "8", "--input-size", "64", "--lr", "1e-3",
                 "--num-workers", "0", "--name", "quirks"])
    assert code == 0, capsys.readouterr().err[-3000:]
    run = tmp_path / "runs" / "quirks"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["quirks"]
    assert (run / "labels.txt").read_text().splitlines() == ["BLACK & YELLOW WARBLER", "PARAKETT AUKLET",
                                                             "SNOWY OWL"]
    cmyk = tmp_path / "kaggle525" / "train" / "SNOWY OWL" / "2.jpg"
    assert Image.open(cmyk).mode == "CMYK"
    answer = Predictor(run / "model.onnx").predict(cmyk)
    assert answer.verdict in ("species", "unsure", "not_a_bird") and len(answer.top_k) == 3


@pytest.mark.slow
def test_notebook_01_runs_on_the_quirks(tmp_path):
    make_kaggle_quirks(tmp_path / "kaggle525", "525")
    out = tmp_path / "01.out.ipynb"
    done = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "01_data.ipynb"), str(out),
                           "-k", "python3", "--cwd", str(tmp_path), "--no-progress-bar",
                           "-p", "DATA_SOURCE", str(tmp_path / "kaggle525"), "-p", "WORKDIR", str(tmp_path / "work"),
                           "-p", "MINI_PER_CLASS", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "PARAKETT AUKLET" in text and "error" not in {o.output_type for c in nb.cells for o in c.get("outputs", [])}
    assert (tmp_path / "work").is_dir()
