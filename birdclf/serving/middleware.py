"""The ASGI layers around the API: the guard (body size cap, chunked bodies too; a budget over the bodies of all
requests in flight; one deadline per request; a JSON answer for every failure; one log line per request, control
characters escaped) and Starlette's CORS with JSON refusals."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from ..constants import MAX_ECHOED
from ..errors import BirdclfError, BusyError

__all__ = ["JsonCORSMiddleware", "cors_options",
           "BodyTooLarge", "BodyBudget", "RequestBytes", "RequestGuard", "json_error", "send_json", "printable",
           "shorten", "REQUEST_BYTES"]

logger = logging.getLogger("birdclf.serving.requests")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_MAX_LOGGED_PATH = 200


class BodyTooLarge(BirdclfError):
    """The request body passed the cap while it was being read."""

    status = 413


class BodyBudget:
    """Bytes of request bodies held by all requests in flight (memory or spooled files); never waits: a request
    whose next piece does not fit is answered 503 at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self.in_use = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> bool:
        """Hold `nbytes` more, if they fit."""
        with self._lock:
            if self.in_use + nbytes > self.capacity:
                return False
            self.in_use += nbytes
            return True

    def give(self, nbytes: int) -> None:
        """Release what a finished request held."""
        with self._lock:
            self.in_use = max(0, self.in_use - nbytes)


REQUEST_BYTES = "birdclf_bytes"  # the key of a request's RequestBytes in the ASGI scope's state


class RequestBytes:
    """The bytes one request holds against the shared BodyBudget: its body, and the images fetched for it.
    Given back when the request ends, or, when its decoding outlives it, when that decoding ends."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0
        self._deferred = False
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> bool:
        """Count `nbytes` more, if the shared budget has room."""
        if not self.budget.take(nbytes):
            return False
        with self._lock:
            self.held += nbytes
        return True

    def hold_past_request(self) -> Callable[[], None]:
        """Keep counting these bytes after the request ends, until the returned function is called."""
        self._deferred = True
        return self._release

    def finish(self) -> None:
        """The request ended: give the bytes back unless something still holds them."""
        if not self._deferred:
            self._release()

    def _release(self) -> None:
        with self._lock:
            nbytes, self.held = self.held, 0
        self.budget.give(nbytes)


def shorten(text: str, limit: int = MAX_ECHOED) -> str:
    """`text` cut to `limit` characters, ending in '...' when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text: str, limit: int = _MAX_LOGGED_PATH) -> str:
    """`text` safe for one log line: control and non-ASCII characters escaped, cut to `limit`."""
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    out = "".join(c if 32 <= ord(c) < 127 else f"\\x{ord(c):02x}" for c in out)
    return shorten(out, limit)


def json_error(status: int, message: str) -> bytes:
    """The body of every error answer."""
    return json.dumps({"error": message, "status": status}, ensure_ascii=False).encode()


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a complete JSON response."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class RequestGuard:
    """Wraps the API app: every request is bounded in body bytes, time and concurrency, and always answered."""

    def __init__(self, app: ASGIApp, max_body: int, timeout: float, body_budget: BodyBudget) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = timeout
        self.body_budget = body_budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 0, "sent": False, "body_done": False, "received": 0,
                                 "disconnected": False}
        path = scope.get("path", "")
        if len(path) > 1 and path.endswith("/"):  # /api/health/ is /api/health (no redirect built from Host)
            scope = dict(scope, path=path.rstrip("/") or "/")
        held = RequestBytes(self.body_budget)
        scope.setdefault("state", {})[REQUEST_BYTES] = held

        async def guarded_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                state["disconnected"] = True
            elif message["type"] == "http.request":
                size = len(message.get("body", b""))
                state["received"] += size
                if state["received"] > self.max_body:
                    raise BodyTooLarge(f"request body is over the {self.max_body}-byte limit")
                if size and not held.take(size):
                    raise BusyError("the server is receiving too many uploads at once; please try again in a few "
                                    "seconds")
                if not message.get("more_body", False):
                    state["body_done"] = True
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["sent"] = message["status"], True
            await send(message)

        async def fail(status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
            if not state["sent"]:
                state["status"], state["sent"] = status, True
                await send_json(send, status, json_error(status, text), extra)

        length = _header(scope, b"content-length")
        try:
            if length and _header(scope, b"transfer-encoding"):  # read one way here, another by a proxy: smuggling
                await fail(400, "a request may not have both Content-Length and Transfer-Encoding",
                           [(b"connection", b"close")])
                return
            if length.isdigit() and int(length) > self.max_body:
                await fail(413, f"request body is {length} bytes, over the {self.max_body}-byte limit")
                return
            with anyio.fail_after(self.timeout):
                await self.app(scope, guarded_receive, tracked_send)
        except BirdclfError as exc:  # raised by guarded_receive outside the app's own handlers
            await fail(exc.status, str(exc), [(b"retry-after", b"5")] if isinstance(exc, BusyError) else None)
        except TimeoutError:
            if state["body_done"] or scope["method"] in ("GET", "HEAD", "OPTIONS"):
                await fail(503, f"the request took longer than {self.timeout:g} s; please try again")
            else:
                await fail(408, f"the request body did not arrive within {self.timeout:g} s",
                           [(b"connection", b"close")])
        except Exception:
            if state["disconnected"]:  # the client went away (or was cut off) mid-request: nobody to answer
                logger.info("client disconnected during %s %s", printable(scope["method"], 16), printable(path))
                return
            logger.exception("unexpected error on %s %s", printable(scope["method"], 16), printable(path))
            await fail(500, "internal error; it has been logged")
        finally:
            held.finish()
            images = (scope.get("state") or {}).get("images", "-")
            logger.info("%s %s %s images=%s bytes=%d %.1f ms", printable(scope["method"], 16), printable(path),
                        state["status"], images, state["received"], (time.perf_counter() - started) * 1000.0)


def cors_options(origins: tuple[str, ...]) -> dict[str, Any]:
    """Starlette CORSMiddleware's options for BIRDCLF_CORS_ORIGINS (the web app's methods and headers)."""
    return {"allow_origins": list(origins), "allow_methods": ["GET", "POST", "OPTIONS"],
            "allow_headers": ["Content-Type", "x-functions-key"], "max_age": 600}


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS; a preflight is answered 204 when allowed and with a JSON 400 naming what is not."""

    def preflight_response(self, request_headers: Headers) -> Response:
        """The preflight answer, in this API's form (every answer is JSON or empty)."""
        answer = super().preflight_response(request_headers)
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in ("content-length", "content-type")}
        if answer.status_code == 200:
            return Response(status_code=204, headers=headers)
        text = bytes(answer.body).decode("latin-1", "replace")  # "Disallowed CORS origin, headers"
        return Response(json_error(400, text), status_code=400, headers=headers, media_type="application/json")
