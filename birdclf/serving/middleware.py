"""The ASGI guard around the API: body size cap (chunked bodies too), one deadline per request, a bound on
requests in flight, CORS, a JSON answer for every failure, and one log line per request."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

__all__ = ["BodyTooLarge", "RequestGuard", "json_error", "send_json"]

logger = logging.getLogger("birdclf.serving.requests")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body passed the cap while it was being read."""


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

    def __init__(self, app: ASGIApp, max_body: int, timeout: float, max_in_flight: int, queue_timeout: float,
                 cors_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = timeout
        self.queue_timeout = queue_timeout
        self.cors_origins = set(cors_origins)
        self.max_in_flight = max_in_flight
        self._slots: anyio.Semaphore | None = None

    def _cors(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        origin = _header(scope, b"origin").rstrip("/")
        if not origin or not ("*" in self.cors_origins or origin in self.cors_origins):
            return []
        headers = [(b"access-control-allow-origin", b"*" if "*" in self.cors_origins else origin.encode("latin-1")),
                   (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS":
            headers += [(b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                        (b"access-control-allow-headers", b"Content-Type, x-functions-key"),
                        (b"access-control-max-age", b"600")]
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = anyio.Semaphore(self.max_in_flight)
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 0, "sent": False, "body_done": False, "received": 0}
        cors = self._cors(scope)

        async def guarded_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    raise BodyTooLarge()
                if not message.get("more_body", False):
                    state["body_done"] = True
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["sent"] = message["status"], True
                message = dict(message, headers=[*message.get("headers", ()), *cors])
            await send(message)

        async def fail(status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
            if not state["sent"]:
                state["status"], state["sent"] = status, True
                await send_json(send, status, json_error(status, text), [*cors, *(extra or [])])

        length = _header(scope, b"content-length")
        try:
            if length.isdigit() and int(length) > self.max_body:
                await fail(413, f"request body is {length} bytes, over the {self.max_body}-byte limit")
                return
            with anyio.move_on_after(self.queue_timeout) as queued:
                await self._slots.acquire()
            if queued.cancelled_caught:
                await fail(503, "the server is busy; please try again in a few seconds", [(b"retry-after", b"5")])
                return
            try:
                with anyio.fail_after(max(0.1, self.timeout - (time.perf_counter() - started))):
                    await self.app(scope, guarded_receive, tracked_send)
            finally:
                self._slots.release()
        except BodyTooLarge:
            await fail(413, f"request body is over the {self.max_body}-byte limit")
        except TimeoutError:
            if state["body_done"] or scope["method"] in ("GET", "HEAD", "OPTIONS"):
                await fail(503, f"the request took longer than {self.timeout:g} s; please try again")
            else:
                await fail(408, f"the request body did not arrive within {self.timeout:g} s",
                           [(b"connection", b"close")])
        except Exception:
            logger.exception("unexpected error on %s %s", scope["method"], scope.get("path"))
            await fail(500, "internal error; it has been logged")
        finally:
            images = (scope.get("state") or {}).get("images", "-")
            logger.info("%s %s %s images=%s bytes=%d %.1f ms", scope["method"], scope.get("path"), state["status"],
                        images, state["received"], (time.perf_counter() - started) * 1000.0)
