"""The API on Azure Functions (Python v2 model): one AsgiFunctionApp over the same FastAPI app, keyed (FUNCTION),
plus anonymous functions for the probe and docs routes, which the host matches before the catch-all route."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import azure.functions as func

from .service import create_app

__all__ = ["ANONYMOUS_ROUTES", "create_function_app"]

# Azure route (under the host's "api" prefix) -> methods; everything else needs the function key.
ANONYMOUS_ROUTES: dict[str, tuple[str, ...]] = {"health": ("GET", "HEAD"), "docs": ("GET",),
                                                "openapi.json": ("GET",)}


def _add_anonymous_route(app: func.AsgiFunctionApp, route: str, methods: tuple[str, ...]) -> None:
    """Register `route` with auth level ANONYMOUS, answered by the same ASGI app as every other route."""
    name = "anonymous_" + route.replace(".", "_")

    @app.function_name(name=name)
    @app.http_type(http_type="asgi")
    @app.route(route=route, methods=list(methods), auth_level=func.AuthLevel.ANONYMOUS)
    async def handler(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
        if not app.startup_task_done:
            if not await app.middleware.notify_startup():
                raise RuntimeError("ASGI start-up failed")
            app.startup_task_done = True
        return await app.middleware.handle_async(req, context)

    handler.__name__ = name


def create_function_app(function_dir: str | os.PathLike | None = None, asgi_app: Any = None) -> func.AsgiFunctionApp:
    """The Functions app: `asgi_app` (default: birdclf's API serving model.onnx from `function_dir` when
    BIRDCLF_MODEL is unset), keyed by default, with ANONYMOUS_ROUTES open to probes and browsers."""
    asgi_app = asgi_app or create_app(beside=Path(function_dir) if function_dir else None)
    app = func.AsgiFunctionApp(app=asgi_app, http_auth_level=func.AuthLevel.FUNCTION)
    for route, methods in ANONYMOUS_ROUTES.items():
        _add_anonymous_route(app, route, methods)
    return app

