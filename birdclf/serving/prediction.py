"""PredictionService: what every request shares (settings, the Predictor loaded once, the limits) and the whole
/api/predict path: read the images, decode them under the memory budget, run the model, answer."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import anyio
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .. import __version__
from ..constants import DEFAULT_TOP_K, MAX_JSON_BYTES, MODEL_CALLS, SERVE_BATCH
from ..errors import (
    BirdclfError,
    EmptyImageError,
    ImageTooLargeError,
    ModelNotFoundError,
    SettingsError,
    UnsupportedMediaError,
)
from ..formats import MEDIA_TYPES
from ..settings import Settings
from .hardening import Admission, BodyBudget
from .hardening.guard import REQUEST_BYTES
from .middleware import shorten
from .model_source import resolve_model_path
from .predictor import Predictor, available_cpus
from .request_models import PredictModels, predict_models, too_many_images
from .urlfetch import fetch_urls

__all__ = ["PredictionService", "IMAGE_TYPES"]

logger = logging.getLogger("birdclf.serving.service")

_RAW_TYPES = ("application/octet-stream", "")
IMAGE_TYPES = (*MEDIA_TYPES, "application/octet-stream")  # documented raw bodies (any image/* is read)
_MAX_FIELDS = 16  # non-file multipart fields (top_k, captions...)
_MAX_FIELD_BYTES = 64 * 1024
_RELOAD_AFTER_S = 30.0  # a model that failed to load is tried again on a request after this


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
        self.admission = Admission(self.max_in_flight, wait_s=min(10.0, settings.request_timeout))
        self._model_limiter: anyio.CapacityLimiter | None = None

    @property
    def model_limiter(self) -> anyio.CapacityLimiter:
        """MODEL_CALLS model calls at a time, taken in arrival order."""
        if self._model_limiter is None:
            self._model_limiter = anyio.CapacityLimiter(MODEL_CALLS)
        return self._model_limiter

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
                self._predictor = Predictor(path, settings=self.settings, batch_size=SERVE_BATCH)
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
        async with self.admission.hold(request) as admitted:
            views = await anyio.to_thread.run_sync(admitted.in_thread(self._decode), predictor, images,
                                                   abandon_on_cancel=True)
            predictions = []  # model calls are short and bounded: waited for in arrival order, MODEL_CALLS at once
            for start in range(0, len(views or ()), SERVE_BATCH):
                predictions += await anyio.to_thread.run_sync(predictor.predict_views,
                                                              views[start:start + SERVE_BATCH], top_k,
                                                              limiter=self.model_limiter)
            del views
        return {"model": {"name": predictor.config.model_name, "version": predictor.config.version},
                "top_k": top_k, "predictions": [{"filename": name, **p.to_dict()}
                                                for (name, _), p in zip(images, predictions, strict=True)],
                "time_ms": round((time.perf_counter() - started) * 1000.0, 2)}

    @staticmethod
    def _decode(predictor: Predictor, images: list[tuple[str, Any]]) -> list[Any]:
        """Decode every image (in a worker thread), freeing each request body as soon as it is decoded."""
        views = []
        for index, (name, item) in enumerate(images):
            try:
                views.append(predictor.prepare(item if isinstance(item, bytes) else item.file.read()))
            except BirdclfError as exc:
                raise exc if len(images) == 1 and name == "image" else type(exc)(f"{name}: {exc}") from exc
            finally:
                images[index] = (name, b"")
                if not isinstance(item, bytes):
                    item.file.close()
            del item
        return views


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
