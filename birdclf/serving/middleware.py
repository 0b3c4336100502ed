"""The ASGI pieces every layer shares (JSON error bodies, text made safe to echo or log) and Starlette's CORS with
JSON refusals; the request guard is in hardening.guard."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from ..constants import MAX_ECHOED

__all__ = ["JsonCORSMiddleware", "cors_options", "json_error", "send_json", "printable", "shorten",
           "Scope", "Message", "Receive", "Send", "ASGIApp"]

logger = logging.getLogger("birdclf.serving.requests")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_MAX_LOGGED_PATH = 200


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
