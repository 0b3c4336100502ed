"""What users install: the built wheel, non-editable, in a fresh venv with only the `serve` extra, used from a
folder outside the checkout (as on Azure, in a container, or by an HTTP client's own machine)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import api_process, clean_env, make_image
from tests.test_packaging import PACKAGED_CHECK

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def serve_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv outside the repo with `birdclf[serve]` installed from the wheel (no torch, no fastai)."""
    venv = tmp_path_factory.mktemp("serve-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[serve]"],
                         capture_output=True, text=True, timeout=900, env=clean_env())
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


def test_wheel_ships_templates_and_page(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("function_app.py", "host.json", "requirements.txt", ".funcignore", "local.settings.example.json"):
        assert f"birdclf/serving/function_template/{name}" in names
    for name in ("app.ipynb", "voila.json", "page.css", "page.js"):  # the page's style and script are files
        assert f"birdclf/webapp/{name}" in names
    assert not any(n.startswith(("tests/", "bench/", "azure_function/")) for n in names)


def test_serve_extra_installs_no_training_stack(serve_venv):
    out = subprocess.run([str(serve_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                         capture_output=True, text=True, check=True, env=clean_env())
    installed = {p["name"].lower() for p in json.loads(out.stdout)}
    assert {"birdclf", "fastapi", "onnxruntime", "uvicorn"} <= installed
    assert not installed & {"torch", "fastai", "timm", "onnx", "torchvision"}


def test_installed_cli_predicts_packages_and_serves(serve_venv, tiny_onnx, tmp_path):
    """From a folder outside the repo: predict, package-function into a new folder, serve that folder's model."""
    birdclf = str(serve_venv / "bin" / "birdclf")
    work = tmp_path / "elsewhere"
    work.mkdir()
    image = work / "bird.png"
    image.write_bytes(make_image(fmt="PNG"))
    env = clean_env(BIRDCLF_HOME=str(tmp_path / "home"))
    out = subprocess.run([birdclf, "predict", str(image), "--model", str(tiny_onnx), "--json"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["verdict"] in ("species", "unsure", "not_a_bird")

    out = subprocess.run([birdclf, "package-function", str(tiny_onnx), "--dest", "deploy/fn"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    fn = work / "deploy" / "fn"
    for name in ("function_app.py", "host.json", "requirements.txt", ".funcignore", "model.onnx",
                 "birdclf/serving/service.py"):
        assert (fn / name).is_file(), name
    check = subprocess.run([str(serve_venv / "bin" / "python"), "-c", PACKAGED_CHECK, str(fn)], cwd=fn, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout.strip().splitlines()[-1])["predict"][0] == 200

    with api_process(tmp_path / "home", args=("--model", str(fn / "model.onnx")),
                     python=str(serve_venv / "bin" / "python"), cwd=work) as server:
        req = urllib.request.Request(f"{server.base}/predict", data=image.read_bytes(),
                                     headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200 and json.loads(resp.read())["model"]["name"] == "tiny"
        with urllib.request.urlopen(f"{server.base}/docs", timeout=30) as resp:
            assert resp.status == 200


def test_training_commands_say_which_extra_is_missing(serve_venv, tmp_path):
    out = subprocess.run([str(serve_venv / "bin" / "birdclf"), "train", "--data", str(tmp_path)], cwd=tmp_path,
                         env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "birdclf[train]" in out.stderr and "Traceback" not in out.stderr
