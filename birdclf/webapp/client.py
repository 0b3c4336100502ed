"""The web app's client for the prediction API: photos sent side by side under one deadline, every failure
turned into words that name the photo and say what to do (standard library only: a lean kernel)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from ..constants import DEFAULT_TOP_K
from ..settings import get_settings
from .photos import FORMATS_TEXT

__all__ = ["AppError", "ApiClient", "MAX_PARALLEL"]

MAX_PARALLEL = 4  # photos of one visitor in flight at once


class AppError(Exception):
    """A problem to show to the person using the page, in plain words; `retryable` when trying the same photo
    again later may work (service down, busy or slow), not when the photo itself was refused."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class ApiClient:
    """Calls the prediction API; URL, key and total timeout from BIRDCLF_API_URL, _API_KEY, _API_TIMEOUT."""

    url: str = ""
    key: str = ""
    timeout: float = 0.0

    def __post_init__(self) -> None:
        settings = get_settings()
        self.url = (self.url or settings.api_url).rstrip("/")
        self.key = self.key or settings.api_key
        self.timeout = float(self.timeout or settings.api_timeout)

    def _request(self, path: str, data: bytes | None = None, timeout: float | None = None,
                 content_type: str = "image/jpeg") -> tuple[int, dict]:
        headers = {"x-functions-key": self.key} if self.key else {}
        if data is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(f"{self.url}/{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {}

    def model_info(self) -> dict[str, Any]:
        """The model's info and card ({} if the API cannot say): names the model's coverage on the page."""
        try:
            status, body = self._request("model", timeout=min(5.0, self.timeout))
        except (OSError, ValueError):
            return {}
        return body if status == 200 else {}

    def predict(self, content: bytes, filename: str, top_k: int = DEFAULT_TOP_K,
                timeout: float | None = None) -> dict:
        """One photo's prediction (a JPEG made by `prepare_photo`), or AppError naming the photo."""
        timeout = timeout or self.timeout
        try:
            status, body = self._request(f"predict?{urlencode({'top_k': top_k})}", content, timeout)
        except TimeoutError as exc:
            raise AppError(f"{filename}: the bird identifier took longer than {timeout:g} s to answer. "
                           "Please try again in a moment.", retryable=True) from exc
        except (OSError, ValueError) as exc:
            raise AppError(f"{filename}: the bird identifier service is unreachable right now. Please try again "
                           "later.", retryable=True) from exc
        if status == 200 and body.get("predictions"):
            return body["predictions"][0]
        raise AppError(_message(status, filename), retryable=status in (408, 429) or status >= 500)

    def predict_many(self, photos: list[tuple[str, bytes]], top_k: int = DEFAULT_TOP_K) -> list[dict | AppError]:
        """Every photo at once (MAX_PARALLEL in flight), all within one deadline of `timeout` seconds."""
        deadline = time.monotonic() + self.timeout
        pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(1, len(photos))))
        futures = [pool.submit(self._predict_by, name, data, top_k, deadline) for name, data in photos]
        wait(futures, timeout=max(0.1, deadline - time.monotonic()))
        pool.shutdown(wait=False, cancel_futures=True)
        results: list[dict | AppError] = []
        for (name, _), future in zip(photos, futures):
            if not future.done():
                results.append(AppError(f"{name}: the bird identifier took longer than {self.timeout:g} s for all "
                                        "the photos. Please try again with fewer photos.", retryable=True))
            elif isinstance(future.exception(), AppError):
                results.append(future.exception())  # type: ignore[arg-type]
            elif future.exception() is not None:
                results.append(AppError(f"{name}: something went wrong while sending it. Please try again.",
                                        retryable=True))
            else:
                results.append(future.result())
        return results

    def _predict_by(self, name: str, data: bytes, top_k: int, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AppError(f"{name}: the bird identifier took longer than {self.timeout:g} s for all the photos. "
                           "Please try again with fewer photos.", retryable=True)
        return self.predict(data, name, top_k, timeout=remaining)


def _message(status: int, filename: str) -> str:
    """What an API error status means for the visitor (the API's own wording is for developers)."""
    if status == 413:
        return f"{filename} is too large for the bird identifier. Please choose a smaller photo."
    if status in (400, 415):
        return f"{filename} could not be read as a photo. Please upload a {FORMATS_TEXT} image."
    if status in (401, 403):
        return "The bird identifier refused the request: its access key is missing or wrong. Please tell the " \
               "site's owner."
    if status in (429, 503):
        return f"{filename}: the bird identifier is busy or starting up. Please try again in a minute."
    return f"{filename}: the bird identifier had a problem (HTTP {status}). Please try again later."
