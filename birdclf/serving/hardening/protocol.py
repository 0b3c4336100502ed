"""uvicorn's h11 protocol, hardened: a deadline for request headers, a cap on open connections, lingering close
after early answers, bodies in too many tiny pieces refused, and JSON for protocol errors."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ...constants import MAX_TINY_PIECES, MIN_MEAN_PIECE
from ..middleware import json_error

__all__ = ["GuardedH11Protocol", "HEADER_TIMEOUT_S", "MAX_CONNECTIONS", "BACKLOG", "KEEP_ALIVE_S", "LINGER_S",
           "LINGER_BYTES"]

logger = logging.getLogger("birdclf.serving.server")

HEADER_TIMEOUT_S = 10.0  # a connection must deliver a request's headers within this, however slowly it drips
MAX_CONNECTIONS = 512  # open connections beyond this get a JSON 503 and are closed
LINGER_S = 2.0  # after an early answer (413...), the rest of the body is read and dropped this long, then close
LINGER_BYTES = 8 * 1024 * 1024  # ... or until this much more arrived
BACKLOG = 2048
KEEP_ALIVE_S = 5


_refusals = {"count": 0, "logged_at": float("-inf")}
_REFUSAL_LOG_EVERY_S = 10.0


def _log_refusal(open_connections: int, limit: int) -> None:
    """One warning per 10 s however many connections are refused (a flood must not flood the log too)."""
    _refusals["count"] += 1
    now = time.monotonic()
    if now - _refusals["logged_at"] >= _REFUSAL_LOG_EVERY_S:
        logger.warning("refused %d connection(s) since the last such warning: %d open connections (limit %d)",
                       _refusals["count"], open_connections, limit)
        _refusals.update(count=0, logged_at=now)


def _raw_json_response(status: int, reason: bytes, message: str) -> bytes:
    body = json_error(status, message)  # the same body as every other error answer
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(body))) + body


class _LingeringTransport:
    """The connection's transport, but a close while the client is still sending its body half-closes: the answer
    and a FIN go out, what still arrives is read and dropped for LINGER_S or LINGER_BYTES, then the socket closes.
    (Closing at once with unread data makes the kernel send a reset, and the client never reads the answer.)"""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._protocol.conn.their_state is h11.SEND_BODY and self._transport.can_write_eof():
            try:
                self._transport.write_eof()
                self._protocol.start_linger()
                return
            except (OSError, RuntimeError):
                pass
        self._transport.close()

    def abort_now(self) -> None:
        """Close for real."""
        self._closing = True
        if not self._transport.is_closing():
            self._transport.close()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request headers, a connection cap, lingering close after early
    answers, and JSON for protocol errors."""

    header_timeout: float = HEADER_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._seen_cycle: Any = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_left: int | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingering = _LingeringTransport(transport, self)
        self._pieces = [0, 0]  # body pieces and bytes of the current request
        self._refusal: str | None = None
        super().connection_made(self._lingering)  # type: ignore[arg-type]
        self.conn.next_event = self._counted(self.conn.next_event)  # type: ignore[method-assign]
        if len(self.connections) > self.max_connections:
            _log_refusal(len(self.connections), self.max_connections)
            transport.write(_raw_json_response(503, b"Service Unavailable",
                                               "too many open connections; please try again shortly"))
            self._lingering.abort_now()
            return
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _counted(self, next_event: Any) -> Any:
        """h11's next_event, refusing a body that comes in too many tiny pieces (each costs a parse and an event)."""
        def counted() -> Any:
            event = next_event()
            if isinstance(event, h11.Request):
                self._pieces = [0, 0]
            elif isinstance(event, h11.Data):
                self._pieces[0] += 1
                self._pieces[1] += len(event.data)
                if self._pieces[0] > MAX_TINY_PIECES and self._pieces[1] < MIN_MEAN_PIECE * self._pieces[0]:
                    self._refusal = (f"request body arrived in over {MAX_TINY_PIECES} pieces of under "
                                     f"{MIN_MEAN_PIECE} bytes on average; send it in larger chunks")
                    raise h11.RemoteProtocolError(self._refusal)
            return event
        return counted

    def _header_timeout(self) -> None:
        """No complete request line and headers in time: close (slow-header attacks hold no connection)."""
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            logger.info("closing a connection that sent no complete request within %.0f s", self.header_timeout)
            self._lingering.abort_now()

    def start_linger(self) -> None:
        """Drop up to LINGER_BYTES of what the client still sends, for at most LINGER_S, then close."""
        self._cancel_timers()
        self._linger_left = LINGER_BYTES
        self._linger_timer = self.loop.call_later(LINGER_S, self._lingering.abort_now)
        self.flow.resume_reading()  # reading may be paused (the app stopped consuming the body)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._seen_cycle:
            self._seen_cycle = self.cycle  # a request's headers arrived: its body is under the app's deadline
            self._cancel_timers()

    def data_received(self, data: bytes) -> None:
        if self._linger_left is not None:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self._lingering.abort_now()
            return
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY:
            self.transport.close()  # answered before the body ended (413, 400...): linger, then close
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout + self.timeout_keep_alive,
                                                      self._header_timeout)

    def _cancel_timers(self) -> None:
        for name in ("_header_timer", "_linger_timer"):
            timer = getattr(self, name, None)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._linger_left = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A malformed request (bad chunk size, bad header...) gets a JSON 400, then the connection closes."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not self.transport.is_closing():
            self.transport.write(_raw_json_response(400, b"Bad Request", self._refusal or "malformed HTTP request"))
        self._lingering.abort_now()
