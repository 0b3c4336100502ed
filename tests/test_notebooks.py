"""Every notebook runs end to end in smoke mode with a real kernel; committed notebooks carry no outputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.conftest import ROOT, api_process, clean_env

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ALL_NOTEBOOKS = NOTEBOOKS + [ROOT / "app.ipynb"]


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_data.ipynb", "02_train.ipynb", "03_evaluate.ipynb",
                                          "04_export_deploy.ipynb"]


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    """Colab badge, install cell, one tagged parameters cell with SMOKE, and no logic-heavy cells."""
    nb = nbformat.read(path, as_version=4)
    text = json.dumps(nb)
    assert "colab.research.google.com" in text and "birdclf[train]" in text
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "SMOKE = False" in tagged[0].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not re.search(r"^\s*(def|class)\s", cell.source, re.M), "logic belongs in the library"


def _outputs(path: Path) -> tuple[list, list]:
    """(error outputs, image outputs) of an executed notebook."""
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return ([o for o in outputs if o.output_type == "error"],
            [o for o in outputs if "image/png" in o.get("data", {})])


@pytest.fixture(scope="module")
def colab_venv(wheel, tmp_path_factory) -> Path:
    """A venv outside the repo shaped like Colab: torch, fastai, timm... preinstalled (this checkout's venv site
    packages, on the path through a .pth file, without its editable birdclf), then `pip install birdclf[train]`
    from the built wheel, which adds only what is missing."""
    venv = tmp_path_factory.mktemp("colab") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = next(venv.glob("lib/python3*/site-packages"))
    preinstalled = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    (site / "zz_preinstalled.pth").write_text(f"{preinstalled}\n")
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[train]"],
                         capture_output=True, text=True, timeout=900, env=clean_env())
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_colab_rehearsal(colab_venv, tmp_path):
    """The four notebooks, as Colab runs them: the installed wheel (not this checkout), from a folder outside the
    repo, chained through WORKDIR and RUN_DIR; notebook 04 leaves a function folder that `birdclf serve` serves."""
    python = str(colab_venv / "bin" / "python")
    content = tmp_path / "content"
    content.mkdir()
    env = clean_env(BIRDCLF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    env.pop("MPLBACKEND", None)
    where = subprocess.run([python, "-c", "import birdclf; print(birdclf.__file__)"], cwd=content, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(colab_venv)), where
    repo_state = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    work = content / "birdclf"

    def execute(name: str, **parameters) -> Path:
        out = content / f"{name}.out.ipynb"
        args = [python, "-m", "papermill", str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), "-k", "python3",
                "--cwd", str(content), "--no-progress-bar", "-p", "SMOKE", "True", "-p", "WORKDIR", str(work)]
        for key, value in parameters.items():
            args += ["-p", key, str(value)]
        done = subprocess.run(args, cwd=content, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
        errors, _ = _outputs(out)
        assert not errors, errors
        return out

    execute("01_data")
    _, images = _outputs(execute("02_train"))
    assert len(images) >= 3  # show_batch, lr_find and plot_loss drawn in the notebook
    (run_dir,) = [p for p in (work / "runs").iterdir() if (p / "export.pkl").is_file() and "compare" not in p.name]
    _, images = _outputs(execute("03_evaluate", RUN_DIR=run_dir))
    assert len(images) >= 2  # confusion matrix and top losses from ClassificationInterpretation
    assert (run_dir / "evaluation" / "per_class.csv").is_file()
    execute("04_export_deploy", RUN_DIR=run_dir)
    function = work / "azure_function"
    for name in ("function_app.py", "host.json", "requirements.txt", ".funcignore", "model.onnx",
                 "birdclf/serving/service.py"):
        assert (function / name).is_file(), name
    assert (run_dir / "model-int8.onnx").is_file()

    image = next((work / "smoke-data" / "test" / "BLUE BUNTING").glob("*.jpg")).read_bytes()
    with api_process(tmp_path / "home", args=("--model", str(function / "model.onnx")), python=python,
                     cwd=content) as server:
        req = urllib.request.Request(f"{server.base}/predict", data=image, headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
    assert body["model"]["version"] == run_dir.name
    assert body["predictions"][0]["top_k"][0]["label"] in {"BLUE BUNTING", "GREEN & BLUE JAY", "RED CARDINAL"}
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                          text=True).stdout == repo_state  # nothing written into the checkout
