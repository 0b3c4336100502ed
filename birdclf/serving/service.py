"""The prediction API as one ASGI application (FastAPI): the same app under uvicorn (`birdclf serve`) and on Azure
Functions (AsgiFunctionApp). Routes live in routes.py; errors map to statuses here, in one place, and every answer
is JSON."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..constants import API_PREFIX
from ..errors import BirdclfError, BusyError, SettingsError
from ..settings import Settings, get_settings
from .hardening import RequestGuard, return_freed_memory_to_os
from .middleware import JsonCORSMiddleware, cors_options, shorten
from .openapi import api_openapi
from .prediction import PredictionService
from .request_models import invalid_request
from .routes import route_methods, router

__all__ = ["ROUTES", "PredictionService", "create_app"]

logger = logging.getLogger(__name__)

ROUTES: dict[str, tuple[str, ...]] = route_methods()  # name under /api -> methods (OPTIONS answered for each)
_MULTIPART_LOGGER = "python_multipart.multipart"  # warns once per malformed body: a flood of bad requests floods logs


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(settings: Settings | None = None, model: str | os.PathLike | None = None,
               beside: str | os.PathLike | None = None) -> FastAPI:
    """The API. Settings default to the environment (a bad value leaves the app up, answering 'misconfigured');
    `model` overrides BIRDCLF_MODEL; `beside` is a folder whose model.onnx is served when no model is set."""
    settings_error = None
    if settings is None:
        try:
            settings = get_settings()
        except SettingsError as exc:
            settings_error, settings = exc, Settings.defaults()
    service = PredictionService(settings, model, beside, settings_error)
    return_freed_memory_to_os()  # decoded photos' memory goes back to the OS, not to per-thread malloc arenas
    logging.getLogger(_MULTIPART_LOGGER).addFilter(_quiet)  # our own DEBUG line says what was malformed

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        await anyio.to_thread.run_sync(service.load)
        yield

    app = FastAPI(title="birdclf prediction API", version=__version__, lifespan=lifespan, redoc_url=None,
                  redirect_slashes=False,
                  docs_url=f"{API_PREFIX}/docs", openapi_url=f"{API_PREFIX}/openapi.json",
                  description="Bird species from a photo. POST an image (raw body, multipart files, or JSON "
                              "with URLs) to /api/predict. Every error is JSON {error, status}.")
    app.state.service = service
    app.add_middleware(RequestGuard, max_body=service.max_body, timeout=settings.request_timeout,
                       body_budget=service.body_budget)
    if settings.cors_origins:  # outside the guard: its own refusals (413, 503...) carry the CORS headers too
        app.add_middleware(JsonCORSMiddleware, **cors_options(settings.cors_origins))

    app.include_router(router)
    _add_options_routes(app)
    _map_errors(app, settings.max_images)
    app.openapi = api_openapi(app, service)  # type: ignore[method-assign]

    return app


def _add_options_routes(app: FastAPI) -> None:
    """OPTIONS on every route answers 204 with its Allow header (preflights without CORS set get this too)."""
    def allow(methods: tuple[str, ...]) -> Any:
        async def options() -> Response:
            return Response(status_code=204, headers={"Allow": ", ".join((*methods, "OPTIONS"))})
        return options

    for route, methods in ROUTES.items():
        app.add_api_route(f"{API_PREFIX}/{route}", allow(methods), methods=["OPTIONS"], include_in_schema=False)


def _map_errors(app: FastAPI, max_images: int) -> None:
    """Errors to statuses, in one place: birdclf's own errors carry theirs; FastAPI's 404/405/422 become JSON."""

    @app.exception_handler(BirdclfError)
    async def birdclf_error(_: Request, exc: BirdclfError) -> JSONResponse:
        if exc.status >= 500:
            logger.warning("%s: %s", type(exc).__name__, exc)
        return _error(exc.status, str(exc), {"Retry-After": "5"} if isinstance(exc, BusyError) else None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, _not_found(request.url.path))
        if exc.status_code == 405:
            allowed = ROUTES.get(request.url.path[len(API_PREFIX) + 1:].strip("/"), ())
            return _error(405, f"{request.url.path} does not accept {request.method}; use {' or '.join(allowed)}",
                          {"Allow": ", ".join((*allowed, "OPTIONS"))})
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problem = invalid_request(list(exc.errors()), max_images)
        return _error(problem.status, str(problem))


def _quiet(record: logging.LogRecord) -> bool:
    """Drop the multipart parser's per-request warnings (a filter function; the same one is added only once)."""
    return record.levelno >= logging.ERROR


def _not_found(path: str) -> str:
    listed = ", ".join(f"{API_PREFIX}/{r}" for r in ROUTES)
    return f"no route {shorten(path)}; routes: {listed}"

