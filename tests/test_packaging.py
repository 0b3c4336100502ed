"""`birdclf package-function`: a complete, publishable Azure Functions folder, from the package alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from birdclf.serving.packaging import TEMPLATE_DIR, TEMPLATE_FILES

_HEAVY_IMPORT = re.compile(r"^\s*(import|from)\s+(torch|torchvision|fastai|timm|onnx|onnxscript)\b", re.M)


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIRDCLF_")}
    return subprocess.run([sys.executable, "-m", "birdclf", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)


def test_package_writes_a_complete_folder(tmp_path, tiny_onnx):
    dest = tmp_path / "new" / "fn"  # missing folders are created
    out = run("package-function", str(tiny_onnx), "--dest", str(dest))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(TEMPLATE_FILES) | {"model.onnx"} <= set(report["written"])
    for name in TEMPLATE_FILES:
        assert (dest / name).read_bytes() == (TEMPLATE_DIR / name).read_bytes()
    assert (dest / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    code = dest / "birdclf"
    assert (code / "serving" / "predictor.py").is_file() and (code / "serving" / "service.py").is_file()
    assert not (code / "training").exists() and not (code / "webapp").exists() and not (code / "data").exists()
    assert not (code / "serving" / "function_template").exists()
    offenders = [str(p) for p in code.rglob("*.py") if _HEAVY_IMPORT.search(p.read_text())]
    assert not offenders, f"packaged code imports training libraries: {offenders}"
    requirements = (dest / "requirements.txt").read_text()
    assert "fastapi" in requirements and "torch" not in requirements


def test_default_destination_is_azure_function_in_the_current_folder(tmp_path, tiny_onnx):
    out = run("package-function", str(tiny_onnx), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "azure_function" / "function_app.py").is_file()


def test_nothing_is_overwritten_without_force(tmp_path, tiny_onnx, starter_onnx):
    dest = tmp_path / "fn"
    assert run("package-function", str(tiny_onnx), "--dest", str(dest)).returncode == 0
    (dest / "host.json").write_text('{"version": "2.0", "mine": true}')
    out = run("package-function", str(starter_onnx), "--dest", str(dest))
    assert out.returncode == 2 and "--force" in out.stderr
    assert (dest / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    out = run("package-function", str(tiny_onnx), "--dest", str(dest))  # same model: fine; host.json kept
    assert out.returncode == 0 and "host.json" in json.loads(out.stdout)["kept"] and "--force" in out.stderr
    assert '"mine"' in (dest / "host.json").read_text()
    out = run("package-function", str(starter_onnx), "--dest", str(dest), "--force")
    assert out.returncode == 0
    assert (dest / "model.onnx.bak").read_bytes() == tiny_onnx.read_bytes()
    assert '"mine"' in (dest / "host.json.bak").read_text() and '"mine"' not in (dest / "host.json").read_text()


def test_a_foreign_birdclf_folder_is_never_replaced(tmp_path, tiny_onnx):
    dest = tmp_path / "fn"
    (dest / "birdclf").mkdir(parents=True)
    (dest / "birdclf" / "mine.py").write_text("x = 1\n")
    out = run("package-function", str(tiny_onnx), "--dest", str(dest))
    assert out.returncode == 2 and "move it away" in out.stderr and (dest / "birdclf" / "mine.py").exists()


def test_not_a_model_is_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    out = run("package-function", str(bad), "--dest", str(tmp_path / "fn"))
    assert out.returncode == 2 and "error:" in out.stderr and not (tmp_path / "fn").exists()


PACKAGED_CHECK = """
import asyncio, io, json, sys
import azure.functions as func
from PIL import Image
import function_app
import birdclf
assert birdclf.__file__.startswith(sys.argv[1]), birdclf.__file__
functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
routes = {f.get_trigger().route: str(f.get_trigger().auth_level) for f in functions.values()}
def call(name, method, path, body=b"", headers=None):
    req = func.HttpRequest(method, "http://localhost" + path, headers=headers or {}, body=body)
    resp = asyncio.run(functions[name].get_user_function()(req, None))
    return resp.status_code, json.loads(resp.get_body() or b"{}")
buf = io.BytesIO(); Image.new("RGB", (60, 40), (200, 30, 30)).save(buf, "JPEG")
health = call("anonymous_health", "GET", "/api/health")
predict = call("http_app_func", "POST", "/api/predict?top_k=2", buf.getvalue(), {"Content-Type": "image/jpeg"})
heavy = [m for m in ("torch", "fastai", "timm", "onnx") if m in sys.modules]
print(json.dumps({"routes": routes, "health": health, "predict": predict, "heavy": heavy}))
"""


def test_packaged_folder_runs_on_its_own(tmp_path, tiny_onnx):
    """The folder's function_app imports the vendored birdclf (not the checkout), serves the packaged model, and
    pulls in no training library."""
    dest = tmp_path / "fn"
    assert run("package-function", str(tiny_onnx), "--dest", str(dest)).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIRDCLF_")}
    env["BIRDCLF_HOME"] = str(tmp_path / "home")
    out = subprocess.run([sys.executable, "-c", PACKAGED_CHECK, str(dest)], cwd=dest, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["health"][0] == 200 and result["health"][1]["model"]["model_name"] == "tiny"
    assert result["predict"][0] == 200 and len(result["predict"][1]["predictions"][0]["top_k"]) == 2
    assert "ANONYMOUS" in result["routes"]["health"].upper()


BUILT_CHECK = """
import io, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]  # only the built dependencies and the function folder
import numpy, onnxruntime
from PIL import Image
import function_app
import birdclf
assert onnxruntime.__file__.startswith(sys.argv[1]) and birdclf.__file__.startswith(sys.argv[2])
session = onnxruntime.InferenceSession(sys.argv[2] + "/model.onnx", providers=["CPUExecutionProvider"])
for fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
    buf = io.BytesIO(); Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, fmt)
    Image.open(io.BytesIO(buf.getvalue())).convert("RGB").load()
out = session.run(None, {"input": numpy.zeros((1, 3, 32, 32), numpy.float32)})
print("ok", out[0].shape)
"""


@pytest.mark.slow
def test_build_installs_trimmed_dependencies_that_serve(tmp_path, tiny_onnx):
    """`--build`: Azure's Linux Python 3.11 dependencies in .python_packages, minus what serving never loads, and
    the function still imports and runs from them alone (python -S: no site-packages of this machine)."""
    dest = tmp_path / "fn"
    out = run("package-function", str(tiny_onnx), "--dest", str(dest), "--build")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["build"]
    site = dest / ".python_packages" / "lib" / "site-packages"
    assert (site / "onnxruntime").is_dir() and (site / "fastapi").is_dir()
    assert not list(site.glob("onnxruntime/capi/libonnxruntime.so*")) and not list(site.glob("numpy/**/tests"))
    assert report["removed_bytes"]["onnxruntime C library"] > 10e6 and report["bytes"] < 130e6
    check = subprocess.run([sys.executable, "-S", "-c", BUILT_CHECK, str(site), str(dest)], capture_output=True,
                           text=True, timeout=120, env={"PATH": os.environ["PATH"], "BIRDCLF_HOME": str(tmp_path)})
    assert check.returncode == 0 and "ok (1, 3)" in check.stdout, check.stderr[-2000:]
