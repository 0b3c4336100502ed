"""The guard around every request: a body-size cap (chunked bodies too), a budget over the bodies of all requests
in flight, one deadline per request, a JSON answer for every failure, and one log line per request (control
characters escaped)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import anyio

from ...errors import BirdclfError, BusyError
from ..middleware import ASGIApp, Message, Receive, Scope, Send, json_error, printable, send_json

__all__ = ["BodyTooLarge", "BodyBudget", "RequestBytes", "RequestGuard", "REQUEST_BYTES"]

logger = logging.getLogger("birdclf.serving.requests")


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


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class _Exchange:
    """One request as the guard sees it: the body bytes counted (and held against the upload budget) as they
    arrive, whether an answer has started, and one log line at the end."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, max_body: int, held: RequestBytes) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self.max_body, self.held = max_body, held
        self.status, self.sent, self.body_done, self.received, self.disconnected = 0, False, False, 0, False
        self.started = time.perf_counter()

    async def receive(self) -> Message:
        """The app's receive: a body over the cap or over the shared budget stops here."""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        elif message["type"] == "http.request":
            size = len(message.get("body", b""))
            self.received += size
            if self.received > self.max_body:
                raise BodyTooLarge(f"request body is over the {self.max_body}-byte limit")
            if size and not self.held.take(size):
                raise BusyError("the server is receiving too many uploads at once; please try again in a few "
                                "seconds")
            self.body_done = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        """The app's send, noting the status."""
        if message["type"] == "http.response.start":
            self.status, self.sent = message["status"], True
        await self._send(message)

    async def fail(self, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer with a JSON error, unless an answer has already started."""
        if not self.sent:
            self.status, self.sent = status, True
            await send_json(self._send, status, json_error(status, text), extra)

    def where(self) -> str:
        """The method and path, safe for the log."""
        return f"{printable(self.scope['method'], 16)} {printable(self.scope.get('path', ''))}"

    def finish(self) -> None:
        """Give back the body bytes (unless a decode still holds them) and log the request."""
        self.held.finish()
        images = (self.scope.get("state") or {}).get("images", "-")
        logger.info("%s %s images=%s bytes=%d %.1f ms", self.where(), self.status, images, self.received,
                    (time.perf_counter() - self.started) * 1000.0)


def _early_refusal(scope: Scope, max_body: int) -> tuple[int, str, list[tuple[bytes, bytes]] | None] | None:
    """A refusal read from the headers alone: smuggling-prone framing, or a declared body over the cap."""
    length = _header(scope, b"content-length")
    if length and _header(scope, b"transfer-encoding"):  # read one way here, another by a proxy: smuggling
        return 400, "a request may not have both Content-Length and Transfer-Encoding", [(b"connection", b"close")]
    if length.isdigit() and int(length) > max_body:
        return 413, f"request body is {length} bytes, over the {max_body}-byte limit", None
    return None


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
        path = scope.get("path", "")
        if len(path) > 1 and path.endswith("/"):  # /api/health/ is /api/health (no redirect built from Host)
            scope = dict(scope, path=path.rstrip("/") or "/")
        exchange = _Exchange(scope, receive, send, self.max_body, RequestBytes(self.body_budget))
        scope.setdefault("state", {})[REQUEST_BYTES] = exchange.held
        try:
            refusal = _early_refusal(scope, self.max_body)
            if refusal:
                await exchange.fail(*refusal)
                return
            with anyio.fail_after(self.timeout):
                await self.app(scope, exchange.receive, exchange.send)
        except BirdclfError as exc:  # raised by exchange.receive outside the app's own handlers
            await exchange.fail(exc.status, str(exc), [(b"retry-after", b"5")] if isinstance(exc, BusyError) else None)
        except TimeoutError:
            if exchange.body_done or scope["method"] in ("GET", "HEAD", "OPTIONS"):
                await exchange.fail(503, f"the request took longer than {self.timeout:g} s; please try again")
            else:
                await exchange.fail(408, f"the request body did not arrive within {self.timeout:g} s",
                                    [(b"connection", b"close")])
        except Exception:
            if exchange.disconnected:  # the client went away (or was cut off) mid-request: nobody to answer
                logger.info("client disconnected during %s", exchange.where())
                return
            logger.exception("unexpected error on %s", exchange.where())
            await exchange.fail(500, "internal error; it has been logged")
        finally:
            exchange.finish()
