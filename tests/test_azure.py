"""The Azure Functions entry point: one AsgiFunctionApp over the API, keyed, with anonymous probe and docs routes."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys

import azure.functions as func
import pytest

from birdclf.serving.packaging import TEMPLATE_DIR, TEMPLATE_FILES
from birdclf.serving.predictor import Predictor
from tests.conftest import ROOT, make_image


def test_repo_folder_is_the_packaged_template():
    for name in TEMPLATE_FILES:
        assert (ROOT / "azure_function" / name).read_bytes() == (TEMPLATE_DIR / name).read_bytes(), name
    ignored = (ROOT / ".gitignore").read_text()
    assert "azure_function/local.settings.json" in ignored


def load_function_app(monkeypatch, home, **env):
    """Import azure_function/function_app.py as the Functions worker does."""
    monkeypatch.setenv("BIRDCLF_HOME", str(home))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("function_app", ROOT / "azure_function" / "function_app.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "function_app", module)
    spec.loader.exec_module(module)
    return {f.get_function_name(): f for f in module.app.get_functions()}


def invoke(function, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    req = func.HttpRequest(method, f"http://localhost{path}", headers=headers or {}, body=body)
    resp = asyncio.run(function.get_user_function()(req, None))
    return resp.status_code, json.loads(resp.get_body() or b"{}"), resp.headers


def test_routes_and_auth_levels(monkeypatch, birdclf_home):
    functions = load_function_app(monkeypatch, birdclf_home)
    triggers = {name: f.get_trigger() for name, f in functions.items()}
    levels = {t.route: str(getattr(t.auth_level, "value", t.auth_level)).lower() for t in triggers.values()}
    assert levels == {"/{*route}": "function", "health": "anonymous", "docs": "anonymous",
                      "openapi.json": "anonymous"}
    methods = {t.route: {str(getattr(m, "value", m)) for m in t.methods} for t in triggers.values()}
    assert methods["health"] == {"GET", "HEAD"} and {"POST", "GET", "OPTIONS"} <= methods["/{*route}"]


def test_the_same_api_answers_through_azure(monkeypatch, birdclf_home, starter_onnx):
    functions = load_function_app(monkeypatch, birdclf_home)
    keyed, health = functions["http_app_func"], functions["anonymous_health"]
    image = make_image(seed=9)
    status, body, _ = invoke(keyed, "POST", "/api/predict?top_k=2", image, {"Content-Type": "image/jpeg"})
    assert status == 200 and body["predictions"][0]["top_k"] == Predictor(starter_onnx).predict(image, top_k=2).top_k
    status, body, headers = invoke(keyed, "GET", "/api/predict")
    assert status == 405 and body["status"] == 405 and "POST" in headers["Allow"]
    status, body, _ = invoke(health, "GET", "/api/health")
    assert status == 200 and body["status"] == "ok"
    status, body, _ = invoke(functions["anonymous_openapi_json"], "GET", "/api/openapi.json")
    assert status == 200 and "/api/predict" in body["paths"]


def test_a_bad_setting_does_not_kill_the_worker(monkeypatch, birdclf_home):
    functions = load_function_app(monkeypatch, birdclf_home, BIRDCLF_URL_TIMEOUT="soon")
    status, body, _ = invoke(functions["anonymous_health"], "GET", "/api/health")
    assert status == 503 and body["status"] == "misconfigured" and "BIRDCLF_URL_TIMEOUT" in body["error"]


@pytest.mark.parametrize("name", TEMPLATE_FILES)
def test_template_files_ship_in_the_package(name):
    assert (TEMPLATE_DIR / name).is_file()
