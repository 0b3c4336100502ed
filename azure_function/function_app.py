"""Azure Functions (Python v2) entry point: thin routes over birdclf's PredictionService (no torch, no fastai)."""

from __future__ import annotations

from pathlib import Path

import azure.functions as func

from birdclf.api import ApiRequest, PredictionService, resolve_service_model

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
service = PredictionService(model_resolver=lambda: resolve_service_model(Path(__file__).parent))
service.warm_up()  # load the model once per worker, at start-up; a failure is reported by /api/health

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]  # wrong ones get a JSON 405


def _answer(route: str, req: func.HttpRequest) -> func.HttpResponse:
    """Adapt an Azure HttpRequest to the service and its answer back."""
    request = ApiRequest(req.method, dict(req.headers), dict(req.params), req.get_body() or b"")
    response = service.handle(route, request)
    return func.HttpResponse(body=response.body if response.status != 204 else b"", status_code=response.status,
                             headers=response.headers, mimetype="application/json", charset="utf-8")


@app.route(route="predict", methods=_METHODS)
def predict(req: func.HttpRequest) -> func.HttpResponse:
    """POST an image (raw body, multipart files or JSON {"url": ...}); get the top-k species."""
    return _answer("predict", req)


@app.route(route="labels", methods=_METHODS)
def labels(req: func.HttpRequest) -> func.HttpResponse:
    """The species the model knows, and model info."""
    return _answer("labels", req)


@app.route(route="health", methods=_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness for probes: is the model loaded, which version."""
    return _answer("health", req)
