"""The prediction API as plain Python: requests in, JSON responses out; the Azure Function only adapts it."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

from . import __version__
from .constants import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_TOP_K,
    ENV_CORS_ORIGINS,
    ENV_MAX_IMAGES,
    ENV_MODEL,
    MAX_TOP_K,
    MODEL_FILENAME,
)
from .errors import BirdclfError, EmptyImageError, ImageTooLargeError, ModelNotFoundError, UnsupportedMediaError
from .imaging import ImageLimits

__all__ = ["ApiRequest", "ApiResponse", "PredictionService", "ROUTES", "resolve_service_model"]

ROUTES = ("predict", "health", "labels")
_ALLOWED = {"predict": ("POST", "OPTIONS"), "health": ("GET", "HEAD", "OPTIONS"),
            "labels": ("GET", "HEAD", "OPTIONS")}
_RAW_TYPES = ("application/octet-stream", "")


@dataclass
class ApiRequest:
    """An HTTP request reduced to what the API reads."""

    method: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str:
        """A header value, case-insensitively; '' when absent."""
        lower = name.lower()
        return next((str(v) for k, v in self.headers.items() if k.lower() == lower), "")


@dataclass
class ApiResponse:
    """Status, JSON payload and headers."""

    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> bytes:
        """The JSON body."""
        return json.dumps(self.payload, ensure_ascii=False).encode()


def _error(status: int, message: str, **headers: str) -> ApiResponse:
    return ApiResponse(status, {"error": message, "status": status}, dict(headers))


def resolve_service_model(function_dir: str | os.PathLike | None = None) -> str | None:
    """The model a deployment serves: $BIRDCLF_MODEL (path or URL), else model.onnx beside the function."""
    setting = os.environ.get(ENV_MODEL, "").strip()
    if setting.startswith(("http://", "https://")):
        from .inference import default_home

        target = default_home() / "downloaded" / Path(setting.split("?", 1)[0]).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            with urllib.request.urlopen(setting, timeout=120) as resp, open(partial, "wb") as out:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
            os.replace(partial, target)
        return str(target)
    if setting:
        return setting
    if function_dir and (Path(function_dir) / MODEL_FILENAME).is_file():
        return str(Path(function_dir) / MODEL_FILENAME)
    return None  # the Predictor falls back to the starter model


class PredictionService:
    """Loads the model once per process and answers /predict, /health and /labels."""

    def __init__(self, model: str | os.PathLike | None = None, threads: int | None = None,
                 limits: ImageLimits | None = None, max_images: int | None = None,
                 cors_origins: str | None = None, model_resolver: Callable[[], Any] | None = None) -> None:
        self._model = model
        self._resolver = model_resolver
        self._threads = threads
        self.limits = limits or ImageLimits()
        self.max_images = int(max_images or os.environ.get(ENV_MAX_IMAGES) or DEFAULT_MAX_IMAGES)
        origins = cors_origins if cors_origins is not None else os.environ.get(ENV_CORS_ORIGINS, "")
        self.cors_origins = {o.strip().rstrip("/") for o in origins.split(",") if o.strip()}
        self._predictor: Any = None
        self._lock = threading.Lock()

    @property
    def predictor(self) -> Any:
        """The Predictor, loaded on first use (once, even with concurrent requests)."""
        if self._predictor is None:
            with self._lock:
                if self._predictor is None:
                    from .inference import Predictor

                    try:
                        model = self._model if self._model is not None else (
                            self._resolver() if self._resolver else None)
                        self._predictor = Predictor(model, threads=self._threads, limits=self.limits)
                    except BirdclfError:
                        raise
                    except OSError as exc:  # e.g. a model URL that cannot be downloaded
                        raise ModelNotFoundError(f"cannot load the model: {exc}") from exc
        return self._predictor

    def warm_up(self) -> BirdclfError | None:
        """Load the model now; returns the error instead of raising, so the app still starts and /health says why."""
        try:
            _ = self.predictor
        except BirdclfError as exc:
            return exc
        return None

    # -- routing -------------------------------------------------------------------------------------------
    def handle(self, route: str, request: ApiRequest) -> ApiResponse:
        """Answer one request; every failure becomes a JSON error with its HTTP status, never an exception."""
        started = time.perf_counter()
        if route not in _ALLOWED:
            response = _error(404, f"no route /api/{route}; routes: " + ", ".join(f"/api/{r}" for r in ROUTES))
        elif request.method.upper() not in _ALLOWED[route]:
            response = _error(405, f"/api/{route} does not accept {request.method.upper()}; "
                                   f"use {' or '.join(m for m in _ALLOWED[route] if m != 'OPTIONS')}",
                              Allow=", ".join(_ALLOWED[route]))
        elif request.method.upper() == "OPTIONS":
            response = ApiResponse(204, {}, {"Allow": ", ".join(_ALLOWED[route])})
        else:
            try:
                response = getattr(self, f"_{route}")(request)
            except BirdclfError as exc:
                response = _error(exc.status, str(exc))
            except Exception as exc:  # the last line of defence: still JSON, still no traceback to the client
                response = _error(500, f"internal error: {type(exc).__name__}")
        if route == "predict" and response.status == 200:
            response.payload["time_ms"] = round((time.perf_counter() - started) * 1000.0, 2)
        self._add_cors(request, response)
        return response

    def _add_cors(self, request: ApiRequest, response: ApiResponse) -> None:
        origin = request.header("Origin").rstrip("/")
        if origin and ("*" in self.cors_origins or origin in self.cors_origins):
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in self.cors_origins else origin
            response.headers["Vary"] = "Origin"
            if request.method.upper() == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = "Content-Type, x-functions-key"
                response.headers["Access-Control-Max-Age"] = "600"

    # -- endpoints -----------------------------------------------------------------------------------------
    def _health(self, request: ApiRequest) -> ApiResponse:
        error = self.warm_up()
        if error is not None:
            return ApiResponse(503, {"status": "error", "error": str(error), "birdclf": __version__})
        return ApiResponse(200, {"status": "ok", "model": self.predictor.info(), "birdclf": __version__})

    def _labels(self, request: ApiRequest) -> ApiResponse:
        predictor = self.predictor
        return ApiResponse(200, {"model": predictor.info(), "labels": list(predictor.labels)})

    def _predict(self, request: ApiRequest) -> ApiResponse:
        top_k = _parse_top_k(request.query.get("top_k"))
        images, from_json = self._read_images(request)
        if isinstance(from_json, dict) and "top_k" in from_json and "top_k" not in request.query:
            top_k = _parse_top_k(from_json["top_k"])
        predictor = self.predictor
        predictions = predictor.predict_batch([data for _, data in images], top_k, names=[n for n, _ in images])
        results = [{"filename": name, **p.to_dict()} for (name, _), p in zip(images, predictions)]
        return ApiResponse(200, {"model": {"name": predictor.config.model_name, "version": predictor.config.version},
                                 "top_k": top_k, "predictions": results})

    def _read_images(self, request: ApiRequest) -> tuple[list[tuple[str, bytes]], Any]:
        content_type = request.header("Content-Type")
        media = content_type.split(";", 1)[0].strip().lower()
        body = request.body or b""
        if len(body) > self.limits.max_bytes * self.max_images:
            raise ImageTooLargeError(f"request body is {len(body)} bytes, over the "
                                     f"{self.limits.max_bytes * self.max_images}-byte limit")
        if media.startswith("image/") or media in _RAW_TYPES:
            if not body:
                raise EmptyImageError("no image: the request body is empty")
            return [("image", body)], None
        if media == "multipart/form-data":
            return self._limit(_parse_multipart(content_type, body)), None
        if media == "application/json":
            return self._from_json(body)
        hint = " (curl --data-binary sends that: add -H 'Content-Type: image/jpeg')" \
            if media == "application/x-www-form-urlencoded" else ""
        raise UnsupportedMediaError(f"unsupported Content-Type {media!r}{hint}; send an image/* body, "
                                    "multipart/form-data files, or JSON {\"url\": ...}")

    def _limit(self, images: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        if not images:
            raise EmptyImageError("no image: the multipart form holds no non-empty file")
        if len(images) > self.max_images:
            raise ImageTooLargeError(f"{len(images)} images in one request, over the limit of {self.max_images}")
        return images

    def _from_json(self, body: bytes) -> tuple[list[tuple[str, bytes]], Any]:
        from .urlfetch import fetch_url

        try:
            data = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BirdclfError(f"body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not ("url" in data or "urls" in data):
            raise BirdclfError('JSON body must be {"url": "https://..."} or {"urls": [...]}')
        urls = data.get("urls") if "urls" in data else [data.get("url")]
        if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
            raise BirdclfError("url must be a non-empty string (urls: a list of them)")
        self._limit([(u, b"") for u in urls])
        return [(url, fetch_url(url, self.limits.max_bytes)) for url in urls], data


def _parse_top_k(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_TOP_K
    try:
        k = int(str(value))
    except ValueError:
        k = -1
    if not 1 <= k <= MAX_TOP_K:
        raise BirdclfError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {value!r}")
    return k


def _parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The non-empty file parts of a multipart/form-data body, as (filename, bytes)."""
    if "boundary=" not in content_type:
        raise BirdclfError("multipart/form-data without a boundary")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
    if not message.is_multipart():
        raise BirdclfError("malformed multipart/form-data body")
    files = []
    for index, part in enumerate(message.iter_parts()):
        data = part.get_payload(decode=True) or b""
        name = part.get_filename() or part.get_param("name", header="content-disposition") or f"file{index}"
        if data:
            files.append((str(name), data))
    return files
