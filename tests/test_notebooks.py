"""Every notebook runs end to end in smoke mode with a real kernel; committed notebooks carry no outputs."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from tests.conftest import ROOT

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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), parameters={"SMOKE": True, "WORKDIR": str(tmp_path / "work")},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False, execution_timeout=600)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert (tmp_path / "work").is_dir()


@pytest.mark.slow
def test_smoke_notebooks_write_their_artifacts(tmp_path):
    """02 then 03 chained through RUN_DIR, as a data scientist would run them."""
    papermill = pytest.importorskip("papermill")
    work = tmp_path / "work"
    nb2 = tmp_path / "02.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "02_train.ipynb"), str(nb2),
                               parameters={"SMOKE": True, "WORKDIR": str(work)}, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    runs = [p for p in (work / "runs").iterdir() if (p / "export.pkl").exists()]
    assert runs, "02_train made no run"
    run = max(runs, key=lambda p: p.stat().st_mtime)
    papermill.execute_notebook(str(ROOT / "notebooks" / "03_evaluate.ipynb"), str(tmp_path / "03.ipynb"),
                               parameters={"SMOKE": True, "WORKDIR": str(work), "RUN_DIR": str(run)},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    assert (run / "evaluation" / "per_class.csv").exists() and (run / "evaluation" / "confusion_matrix.png").exists()
