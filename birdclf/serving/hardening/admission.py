"""Admission to the expensive part of a request (decoding and the model): a bounded number of work places, waited
for a short while, and the request's bytes against the shared upload budget, both held until the work really ends
(a decode left running past the request's deadline keeps them until its thread finishes)."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from starlette.requests import Request

from ...errors import BusyError
from .guard import REQUEST_BYTES

__all__ = ["Admission", "Pass"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Pass:
    """One admitted request's place and bytes; `in_thread` runs its work so that whoever ends last gives them back:
    the request (on the event loop) or, when the request was cancelled mid-work, the worker thread."""

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back = give_back  # on the event loop's thread
        self._lock = threading.Lock()
        self._working = False  # a worker thread runs this pass's work now
        self._left = False  # the request is over (answered, failed or cancelled)

    def in_thread(self, work: Callable[..., T]) -> Callable[..., T | None]:
        """`work` for anyio.to_thread.run_sync(..., abandon_on_cancel=True): skipped if the request already left."""
        def run(*args: Any) -> T | None:
            with self._lock:
                if self._left:
                    return None
                self._working = True
            try:
                return work(*args)
            finally:
                with self._lock:
                    self._working, orphaned = False, self._left
                if orphaned:
                    self._give_back_from_thread()
        return run

    def leave(self) -> None:
        """The request is over: give the place and bytes back now, unless its work still runs (then that does)."""
        with self._lock:
            self._left = True
            working = self._working
        if not working:
            self._give_back()

    def _give_back_from_thread(self) -> None:
        try:
            anyio.from_thread.run_sync(self._give_back)
        except RuntimeError:  # the event loop is gone (shutting down): nothing waits for the place any more
            logger.debug("work place given back after the event loop stopped")


class Admission:
    """`capacity` requests decoding or predicting at once; the rest wait up to `wait_s`, then get BusyError."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self._places: anyio.Semaphore | None = None  # made on the event loop, at first use

    @property
    def free_places(self) -> int:
        """Work places free now."""
        return self.capacity if self._places is None else self._places.value

    @asynccontextmanager
    async def hold(self, request: Request) -> AsyncIterator[Pass]:
        """A work place and the request's bytes (its body, its fetched images) until the work ends. Taken once the
        body is in, so slow uploads hold no place."""
        if self._places is None:
            self._places = anyio.Semaphore(self.capacity)
        places = self._places
        admitted_in_time = False
        with anyio.move_on_after(self.wait_s):
            await places.acquire()
            admitted_in_time = True
        if not admitted_in_time:
            raise BusyError("the server is busy; please try again in a few seconds")
        held = getattr(request.state, REQUEST_BYTES, None)
        release_bytes = held.hold_past_request() if held else (lambda: None)

        def give_back() -> None:
            release_bytes()  # bytes first: a free place then always means its bytes are free too
            places.release()

        admitted = Pass(give_back)
        try:
            yield admitted
        finally:
            admitted.leave()
