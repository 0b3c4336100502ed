"""The prediction API as one ASGI application (FastAPI): the same app under uvicorn (`birdclf serve`) and on Azure
Functions (AsgiFunctionApp). Errors map to statuses in one place and every answer is JSON."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from .. import __version__
from ..constants import API_PREFIX, DEFAULT_TOP_K, MAX_JSON_BYTES, MODEL_CALLS, SERVE_BATCH
from ..errors import (
    BirdclfError,
    BusyError,
    EmptyImageError,
    ImageTooLargeError,
    ModelNotFoundError,
    SettingsError,
    UnsupportedMediaError,
)
from ..settings import Settings, get_settings
from .imaging import return_freed_memory_to_os
from .middleware import REQUEST_BYTES, BodyBudget, JsonCORSMiddleware, RequestGuard, cors_options, shorten
from .model_source import resolve_model_path
from .predictor import Predictor, available_cpus
from .request_models import PredictModels, invalid_request, predict_models, query_top_k, too_many_images
from .schemas import ErrorResponse, HealthResponse, LabelsResponse, ModelResponse, PredictResponse
from .urlfetch import fetch_urls

__all__ = ["ROUTES", "PredictionService", "create_app"]

logger = logging.getLogger(__name__)

ROUTES: dict[str, tuple[str, ...]] = {"predict": ("POST",), "health": ("GET", "HEAD"), "labels": ("GET", "HEAD"),
                                      "model": ("GET", "HEAD"), "docs": ("GET",), "openapi.json": ("GET",)}
_RAW_TYPES = ("application/octet-stream", "")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
                "application/octet-stream")  # documented; any image/* is read
_MAX_FIELDS = 16  # non-file multipart fields (top_k, captions...)
_MAX_FIELD_BYTES = 64 * 1024
_RELOAD_AFTER_S = 30.0  # a model that failed to load is tried again on a request after this
_MULTIPART_LOGGER = "python_multipart.multipart"  # warns once per malformed body: a flood of bad requests floods logs


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class PredictionService:
    """State shared by every request: the settings, the Predictor (loaded once per process) and the limits."""

    def __init__(self, settings: Settings, model: str | os.PathLike | None = None,
                 beside: str | os.PathLike | None = None, settings_error: SettingsError | None = None) -> None:
        self.settings = settings
        self.settings_error = settings_error
        self.models: PredictModels = predict_models(settings.max_images)
        self._model = model
        self._beside = beside
        self._predictor: Predictor | None = None
        self._load_error: BirdclfError | None = None
        self._failed_at = 0.0
        self._lock = threading.Lock()
        self.max_body = settings.max_bytes * settings.max_images + (1 << 20)
        self.body_budget = BodyBudget(max(settings.upload_budget, self.max_body))  # one largest request always fits
        self.max_in_flight = max(4, 4 * available_cpus())  # requests decoding or predicting; the rest wait
        self.queue_timeout = min(10.0, settings.request_timeout)
        self._work_slots: anyio.Semaphore | None = None
        self._model_limiter: anyio.CapacityLimiter | None = None

    @property
    def model_limiter(self) -> anyio.CapacityLimiter:
        """MODEL_CALLS model calls at a time, taken in arrival order."""
        if self._model_limiter is None:
            self._model_limiter = anyio.CapacityLimiter(MODEL_CALLS)
        return self._model_limiter

    async def work_slot(self) -> None:
        """Wait (up to queue_timeout) for one of max_in_flight places to decode and predict; BusyError if none.
        Taken once the body is in, so that slow uploads hold no place."""
        if self._work_slots is None:
            self._work_slots = anyio.Semaphore(self.max_in_flight)
        with anyio.move_on_after(self.queue_timeout):
            await self._work_slots.acquire()
            return
        raise BusyError("the server is busy; please try again in a few seconds")

    def release_work_slot(self) -> None:
        """Give back the place taken by work_slot (on the event loop's thread)."""
        if self._work_slots is not None:
            self._work_slots.release()

    def _release_work_slot_from_thread(self) -> None:
        try:
            anyio.from_thread.run_sync(self.release_work_slot)
        except RuntimeError:  # the event loop is gone (shutting down): nothing waits for the place any more
            logger.debug("work place released after the event loop stopped")

    def load(self) -> None:
        """Load the model now (start-up); a failure is kept and reported by /api/health, never raised."""
        if self.settings_error is not None:
            logger.error("birdclf is misconfigured: %s", self.settings_error)
            return
        with self._lock:
            if self._predictor is not None:
                return
            started = time.perf_counter()
            try:
                path = resolve_model_path(self._model, self.settings, self._beside)
                self._predictor = Predictor(path, settings=self.settings)
                self._load_error = None
                logger.info("serving %s version %s (%d classes) with %d threads; ready in %.2f s",
                            self._predictor.config.model_name, self._predictor.config.version,
                            self._predictor.config.num_classes, self._predictor.threads,
                            time.perf_counter() - started)
            except BirdclfError as exc:
                self._load_error, self._failed_at = exc, time.monotonic()
                logger.error("the model could not be loaded: %s", exc)
            except Exception as exc:  # onnxruntime, disk or network trouble: still a clear 503, never a crash
                self._load_error, self._failed_at = ModelNotFoundError(str(exc)), time.monotonic()
                logger.exception("the model could not be loaded")

    @property
    def predictor(self) -> Predictor:
        """The loaded Predictor, or a 503 error that says so without paths or library text."""
        if self.settings_error is not None:
            raise SettingsError(f"the service is misconfigured: {self.settings_error}")
        if self._predictor is None and (self._load_error is None
                                        or time.monotonic() - self._failed_at > _RELOAD_AFTER_S):
            self.load()
        if self._predictor is None:
            raise ModelNotFoundError("the model could not be loaded; the server log says why")
        return self._predictor

    async def ready_predictor(self) -> Predictor:
        """The Predictor, loading (or retrying) it off the event loop: a model download must not stall requests."""
        if self._predictor is not None:
            return self._predictor
        return await anyio.to_thread.run_sync(lambda: self.predictor)

    async def health(self) -> tuple[int, dict[str, Any]]:
        """Status and body of /api/health."""
        if self.settings_error is not None:
            return 503, {"status": "misconfigured", "error": str(self.settings_error), "birdclf": __version__}
        try:
            return 200, {"status": "ok", "model": (await self.ready_predictor()).info(), "birdclf": __version__}
        except BirdclfError as exc:
            return 503, {"status": "error", "error": str(exc), "birdclf": __version__}

    # -- reading images from a request ------------------------------------------------------------------
    async def read_images(self, request: Request) -> tuple[list[tuple[str, Any]], int | None]:
        """[(name, bytes or UploadFile)] from a raw, multipart or JSON body, and a top_k given in the body."""
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media.startswith("image/") or media in _RAW_TYPES:
            data = await _read_body(request, self.settings.max_bytes, "image")
            if not data:
                raise EmptyImageError("no image: the request body is empty")
            return [("image", data)], None
        if media == "multipart/form-data":
            return await self._multipart(request)
        if media == "application/json":
            return await self._json(request)
        hint = " (curl --data-binary sends that: add -H 'Content-Type: image/jpeg')" \
            if media == "application/x-www-form-urlencoded" else ""
        raise UnsupportedMediaError(f"unsupported Content-Type {shorten(media)!r}{hint}; send an image/* body, "
                                    "multipart/form-data files, or JSON {\"url\": ...}")

    async def _multipart(self, request: Request) -> tuple[list[tuple[str, Any]], int | None]:
        limit = self.settings.max_images
        parser = MultiPartParser(request.headers, request.stream(), max_files=limit,
                                 max_fields=_MAX_FIELDS, max_part_size=_MAX_FIELD_BYTES)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            text = exc.message.lower()
            if "too many files" in text:
                raise too_many_images(f"more than {limit}", limit) from exc
            if "too many fields" in text:
                raise ImageTooLargeError(f"more than {_MAX_FIELDS} form fields besides the files") from exc
            if "exceeded maximum size" in text:
                raise ImageTooLargeError(f"a form field (not a file) is over {_MAX_FIELD_BYTES // 1024} KB") from exc
            logger.debug("malformed multipart body: %s", exc.message)
            raise BirdclfError("malformed multipart/form-data body (send files as form parts with a name, e.g. "
                               "curl -F file=@bird.jpg)") from exc
        files: list[tuple[str, Any]] = []
        for index, (field, value) in enumerate(form.multi_items()):
            if isinstance(value, UploadFile) and value.size:
                name = shorten(value.filename or field or f"file{index}")
                if value.size > self.settings.max_bytes:
                    raise ImageTooLargeError(f"{name} is {value.size} bytes, over the "
                                             f"{self.settings.max_bytes}-byte limit")
                files.append((name, value))
        top_k = [v for v in form.getlist("top_k") if isinstance(v, str)]
        if len(top_k) > 1:
            raise BirdclfError(f"top_k may be given once, not {len(top_k)} times")
        checked = self.models.parse_form([value for _, value in files], top_k[0] if top_k else None)
        return files, checked.top_k

    async def _json(self, request: Request) -> tuple[list[tuple[str, Any]], int | None]:
        body = await _read_body(request, MAX_JSON_BYTES, "JSON body")
        try:
            data = json.loads(body or b"null")
        except json.JSONDecodeError as exc:
            raise BirdclfError(f"body is not valid JSON (line {exc.lineno}, column {exc.colno})") from exc
        except UnicodeDecodeError as exc:
            raise BirdclfError("body is not valid JSON: it is not UTF-8 text") from exc
        except RecursionError as exc:
            raise BirdclfError("body is not valid JSON: nested too deeply") from exc
        except ValueError as exc:  # e.g. an integer of thousands of digits
            raise BirdclfError("body is not valid JSON: a number in it is too long") from exc
        checked = self.models.parse_urls(data)  # a bad request is refused before anything is fetched for it
        urls = checked.all_urls
        held = getattr(request.state, REQUEST_BYTES, None)
        fetched = await fetch_urls(urls, self.settings.max_bytes, self.settings.url_timeout,
                                   self.settings.allow_private_urls, take=held.take if held else None)
        return [(shorten(url), body) for url, body in zip(urls, fetched)], checked.top_k

    # -- predicting ------------------------------------------------------------------------------------
    async def predict(self, request: Request, query_k: int | None = None) -> dict[str, Any]:
        """The whole /api/predict: read, decode under the memory budget, run the model, answer. top_k: the
        query's (`query_k`, already validated), else the body's, else the default."""
        started = time.perf_counter()
        predictor = await self.ready_predictor()
        images, body_k = await self.read_images(request)
        top_k = query_k or body_k or DEFAULT_TOP_K
        request.state.images = len(images)
        await self.work_slot()
        held = getattr(request.state, REQUEST_BYTES, None)
        release_bytes = held.hold_past_request() if held else (lambda: None)
        # waiting -> running -> decoded, or waiting -> dropped (cancelled before it ran), or running -> abandoned
        # (cancelled while decoding: the decode thread gives the place and the bytes back when it really ends)
        phase = {"now": "waiting"}
        phase_lock = threading.Lock()

        def decode() -> list[Any]:
            """Decode every image in one worker thread, freeing each request body as soon as it is decoded."""
            with phase_lock:
                if phase["now"] == "dropped":
                    return []
                phase["now"] = "running"
            try:
                arrays = []
                for index, (name, item) in enumerate(images):
                    try:
                        arrays.append(predictor.preprocess(item if isinstance(item, bytes) else item.file.read()))
                    except BirdclfError as exc:
                        raise exc if len(images) == 1 and name == "image" else type(exc)(f"{name}: {exc}") from exc
                    finally:
                        images[index] = (name, b"")
                        if not isinstance(item, bytes):
                            item.file.close()
                    del item
                return arrays
            finally:
                with phase_lock:
                    abandoned = phase["now"] == "abandoned"
                    phase["now"] = "decoded"
                if abandoned:
                    release_bytes()  # bytes first: a free place then always means its bytes are free too
                    self._release_work_slot_from_thread()

        try:
            arrays = await anyio.to_thread.run_sync(decode, abandon_on_cancel=True)
        except BaseException:
            with phase_lock:
                owner_is_thread = phase["now"] == "running"
                phase["now"] = "abandoned" if owner_is_thread else "dropped"
            if not owner_is_thread:
                release_bytes()
                self.release_work_slot()
            raise
        try:  # model calls are short and bounded: they are waited for, in arrival order, MODEL_CALLS at a time
            predictions = []
            for start in range(0, len(arrays), SERVE_BATCH):
                predictions += await anyio.to_thread.run_sync(predictor.predict_arrays,
                                                              arrays[start:start + SERVE_BATCH], top_k,
                                                              limiter=self.model_limiter)
        finally:
            del arrays
            release_bytes()
            self.release_work_slot()
        return {"model": {"name": predictor.config.model_name, "version": predictor.config.version},
                "top_k": top_k, "predictions": [{"filename": name, **p.to_dict()}
                                                for (name, _), p in zip(images, predictions, strict=True)],
                "time_ms": round((time.perf_counter() - started) * 1000.0, 2)}


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (chunked bodies included)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ImageTooLargeError(f"{what} is {length} bytes, over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ImageTooLargeError(f"{what} is over the {limit}-byte limit")
    return bytes(body)


def _errors(**cases: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: status -> {error, status} with what it means on this route."""
    return {int(status[1:]): {"model": ErrorResponse, "description": text} for status, text in cases.items()}


def _predict_openapi(service: PredictionService) -> tuple[dict[str, Any], dict[int | str, dict[str, Any]]]:
    """The request body (from the request models) and every error answer of /api/predict."""
    limits = service.settings
    image = {"schema": {"type": "string", "format": "binary", "description": (
        f"one image (JPEG, PNG, WebP, GIF, BMP or TIFF) of at most {limits.max_bytes} bytes (BIRDCLF_MAX_BYTES) and "
        f"{limits.max_pixels} pixels (BIRDCLF_MAX_PIXELS)")}}
    forms = {"multipart/form-data": {"schema": service.models.form.model_json_schema()},
             "application/json": {"schema": service.models.url_body.model_json_schema()}}
    body = {"requestBody": {"required": True, "content": {**{media: image for media in _IMAGE_TYPES}, **forms},
                            "description": "one image as the raw body, image files as multipart `file` parts, or "
                            f"JSON with image URLs; at most {limits.max_images} images (BIRDCLF_MAX_IMAGES), each "
                            f"of at most {limits.max_bytes} bytes and {limits.max_pixels} pixels"}}
    responses = _errors(
        _400="a parameter is invalid, a body is malformed, an image cannot be decoded, or a URL cannot be fetched",
        _408="the request body did not arrive within BIRDCLF_REQUEST_TIMEOUT seconds",
        _413=f"over a limit: {limits.max_images} images, {limits.max_bytes} bytes or {limits.max_pixels} pixels "
             "an image, the decode memory, or the size of a JSON body or form field",
        _415="the Content-Type is not image/*, application/octet-stream, multipart/form-data or application/json",
        _503="busy (retry after the Retry-After header's seconds), past the request deadline, or no model loaded")
    return body, responses


def _without_validation_422(app: FastAPI) -> Any:
    """app.openapi without FastAPI's default 422 answers: invalid requests are answered 400 {error, status}."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema
    return openapi


def create_app(settings: Settings | None = None, model: str | os.PathLike | None = None,
               beside: str | os.PathLike | None = None) -> FastAPI:
    """The API. Settings default to the environment (a bad value leaves the app up, answering 'misconfigured');
    `model` overrides BIRDCLF_MODEL; `beside` is a folder whose model.onnx is served when no model is set."""
    settings_error = None
    if settings is None:
        try:
            settings = get_settings()
        except SettingsError as exc:
            settings_error, settings = exc, Settings()
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

    predict_body, predict_errors = _predict_openapi(service)

    @app.post(f"{API_PREFIX}/predict", response_model=PredictResponse, responses=predict_errors,
              openapi_extra=predict_body, summary="Top-k species for one or more images")
    async def predict(request: Request, top_k: int | None = Depends(query_top_k)) -> JSONResponse:
        return JSONResponse(await service.predict(request, top_k))

    async def health() -> JSONResponse:
        status, body = await service.health()
        return JSONResponse(body, status_code=status)

    async def labels() -> JSONResponse:
        predictor = await service.ready_predictor()
        return JSONResponse({"model": predictor.info(), "labels": list(predictor.labels)})

    async def model_card() -> JSONResponse:
        predictor = await service.ready_predictor()
        return JSONResponse({"model": predictor.info(), "card": dict(predictor.config.card)})

    for route, endpoint, schema, summary in (
            ("health", health, HealthResponse, "Is the model loaded (anonymous on Azure, for probes)"),
            ("labels", labels, LabelsResponse, "The species the model knows"),
            ("model", model_card, ModelResponse, "Model info and its model card")):
        responses = ({503: {"model": HealthResponse, "description": "the model cannot serve"}} if route == "health"
                     else _errors(_503="no model loaded (the server log says why), or past the request deadline"))
        app.add_api_route(f"{API_PREFIX}/{route}", endpoint, methods=["GET"], response_model=schema,
                          responses=responses, summary=summary)
        app.add_api_route(f"{API_PREFIX}/{route}", endpoint, methods=["HEAD"], include_in_schema=False)

    def allow(methods: tuple[str, ...]) -> Any:
        async def options() -> Response:
            return Response(status_code=204, headers={"Allow": ", ".join((*methods, "OPTIONS"))})
        return options

    for route, methods in ROUTES.items():
        app.add_api_route(f"{API_PREFIX}/{route}", allow(methods), methods=["OPTIONS"], include_in_schema=False)

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
        problem = invalid_request(list(exc.errors()), settings.max_images)
        return _error(problem.status, str(problem))

    app.openapi = _without_validation_422(app)  # type: ignore[method-assign]

    return app


def _quiet(record: logging.LogRecord) -> bool:
    """Drop the multipart parser's per-request warnings (a filter function; the same one is added only once)."""
    return record.levelno >= logging.ERROR


def _not_found(path: str) -> str:
    listed = ", ".join(f"{API_PREFIX}/{r}" for r in ROUTES)
    return f"no route {shorten(path)}; routes: {listed}"

