"""Serve the Azure Function app's own routes over real HTTP locally (the `func` host cannot run everywhere)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .constants import DEFAULT_FUNCTION_PORT, DEFAULT_HOST, DEFAULT_MAX_BYTES, DEFAULT_MAX_IMAGES

__all__ = ["Route", "function_dir", "load_function_app", "routes_of", "make_server", "serve"]

_MAX_BODY = DEFAULT_MAX_BYTES * DEFAULT_MAX_IMAGES + (1 << 20)


def function_dir() -> Path:
    """The repository's azure_function/ folder."""
    return Path(__file__).resolve().parents[1] / "azure_function"


def load_function_app(path: str | os.PathLike | None = None) -> ModuleType:
    """Import function_app.py (the very module Azure runs) from its folder."""
    path = Path(path or function_dir() / "function_app.py")
    if path.is_dir():
        path = path / "function_app.py"
    spec = importlib.util.spec_from_file_location("function_app", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"no function app at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Route:
    """One HTTP-triggered function as the Functions host sees it."""

    name: str
    function: Callable[..., Any]
    methods: frozenset[str]
    auth_level: str


def routes_of(app: Any) -> dict[str, Route]:
    """Route -> Route, read once from `app.get_functions()` like the Functions host does (it may run only once)."""
    cached = getattr(app, "_birdclf_routes", None)
    if cached is not None:
        return cached
    routes = {}
    for function in app.get_functions():
        trigger = function.get_trigger()
        if getattr(trigger, "type", "") != "httpTrigger":
            continue
        methods = frozenset(str(getattr(m, "value", m)).upper() for m in (trigger.methods or []))
        level = str(getattr(trigger.auth_level, "value", trigger.auth_level))
        routes[trigger.route.strip("/")] = Route(function.get_function_name(), function.get_user_function(),
                                                 methods, level)
    app._birdclf_routes = routes
    return routes


def _read_chunked(stream: Any, limit: int) -> bytes:
    body = bytearray()
    while True:
        size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            stream.readline()
            return bytes(body)
        body += stream.read(size)
        stream.readline()
        if len(body) > limit:
            raise ValueError("body too large")


def make_server(host: str = DEFAULT_HOST, port: int = DEFAULT_FUNCTION_PORT, app_module: ModuleType | None = None,
                max_body: int = _MAX_BODY) -> ThreadingHTTPServer:
    """A threaded HTTP server answering /api/<route> with the function app's own functions."""
    import azure.functions as func

    module = app_module or load_function_app()
    routes = routes_of(module.app)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "birdclf-local-functions"

        def log_message(self, fmt: str, *args: Any) -> None:
            if os.environ.get("BIRDCLF_ACCESS_LOG"):
                super().log_message(fmt, *args)

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _json(self, status: int, message: str) -> None:
            self.close_connection = True
            body = json.dumps({"error": message, "status": status}).encode()
            self._send(status, body, {"Content-Type": "application/json"})

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            route = parts.path[len("/api/"):].strip("/") if parts.path.startswith("/api/") else None
            if route not in routes:
                self._json(404, f"no route {parts.path}; routes: " + ", ".join(f"/api/{r}" for r in routes))
                return
            target = routes[route]
            if self.command not in target.methods:
                self._json(405, f"{parts.path} does not accept {self.command}")
                return
            try:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    body = _read_chunked(self.rfile, max_body)
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    if length > max_body:
                        self._json(413, f"request body is {length} bytes, over the {max_body}-byte limit")
                        return
                    body = self.rfile.read(length) if length > 0 else b""
            except ValueError:
                self._json(413, f"request body over the {max_body}-byte limit")
                return
            request = func.HttpRequest(self.command, f"http://{self.headers.get('Host', 'localhost')}{self.path}",
                                       headers=dict(self.headers.items()), params=dict(parse_qsl(parts.query)),
                                       route_params={}, body=body)
            response = target.function(request)
            headers = dict(response.headers)
            if response.mimetype:
                headers.setdefault("Content-Type", f"{response.mimetype}; charset={response.charset or 'utf-8'}")
            self._send(response.status_code, response.get_body() or b"", headers)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _dispatch

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_FUNCTION_PORT, model: str | None = None) -> None:
    """Run the function app locally until interrupted (model from `model` or $BIRDCLF_MODEL)."""
    if model:
        os.environ["BIRDCLF_MODEL"] = str(Path(model).resolve())
    server = make_server(host, port)
    print(f"birdclf function serving on http://{host}:{server.server_address[1]}/api/predict", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
