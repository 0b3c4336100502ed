"""Every BIRDCLF_* environment variable, parsed once into one typed, validated object."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from .constants import (
    DEFAULT_API_TIMEOUT,
    DEFAULT_API_URL,
    DEFAULT_DECODE_MEMORY,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_UPLOAD_BUDGET,
    DEFAULT_URL_TIMEOUT,
    ENV_ALLOW_PRIVATE_URLS,
    ENV_API_KEY,
    ENV_API_TIMEOUT,
    ENV_API_URL,
    ENV_BIRD_THRESHOLD,
    ENV_CORS_ORIGINS,
    ENV_DECODE_MEMORY,
    ENV_HOME,
    ENV_LOG_LEVEL,
    ENV_MAX_BYTES,
    ENV_MAX_IMAGES,
    ENV_MAX_PIXELS,
    ENV_MODEL,
    ENV_REQUEST_TIMEOUT,
    ENV_THREADS,
    ENV_UPLOAD_BUDGET,
    ENV_URL_TIMEOUT,
    ENV_WEIGHTS_URL,
)
from .errors import SettingsError

__all__ = ["Settings", "get_settings", "reset_settings", "parse_size", "parse_bool"]

T = TypeVar("T")

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KB": 10**3, "MB": 10**6, "GB": 10**9,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]I?B?)?\s*$", re.IGNORECASE)
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_size(text: str) -> int:
    """'20971520', '20MB', '20 MiB', '50M' -> an integer (K/M/G are powers of 1000, KiB/MiB/GiB of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError("expected a whole number, optionally with a unit (K, M, G, KB, MB, GB, KiB, MiB, GiB)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def parse_bool(text: str) -> bool:
    """'1', 'true', 'yes', 'on' -> True; '0', 'false', 'no', 'off', '' -> False; anything else is an error."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _positive(convert: Callable[[str], T], low: float = 0, high: float = float("inf"),
              inclusive: bool = False) -> Callable[[str], T]:
    def parse(text: str) -> T:
        value = convert(text)
        if not (low <= value <= high if inclusive else low < value <= high):  # type: ignore[operator]
            raise ValueError(f"expected a value {'from' if inclusive else 'above'} {low:g}"
                             + (f" up to {high:g}" if high != float("inf") else ""))
        return value
    return parse


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}")
    return level


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


def _env(name: str, parse: Callable[[str], Any], default: Any, environ: Mapping[str, str],
         problems: list[str]) -> Any:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        problems.append(f"{name}={raw!r}: {exc}")
        return default


@dataclass(frozen=True)
class Settings:
    """The whole configuration of birdclf (serving, web app, training), with the defaults documented in README."""

    model: str | None = None  # BIRDCLF_MODEL: ONNX path or http(s) URL; None: model.onnx beside the app, or starter
    home: Path = field(default_factory=lambda: Path.home() / ".cache" / "birdclf")  # BIRDCLF_HOME
    threads: int | None = None  # BIRDCLF_THREADS; None: the CPUs this process may use
    max_bytes: int = DEFAULT_MAX_BYTES  # BIRDCLF_MAX_BYTES: largest image file
    max_pixels: int = DEFAULT_MAX_PIXELS  # BIRDCLF_MAX_PIXELS: largest image, width x height
    max_images: int = DEFAULT_MAX_IMAGES  # BIRDCLF_MAX_IMAGES: most images in one request
    decode_memory: int = DEFAULT_DECODE_MEMORY  # BIRDCLF_DECODE_MEMORY: bytes of pixels decoded at once, all requests
    upload_budget: int = DEFAULT_UPLOAD_BUDGET  # BIRDCLF_UPLOAD_BUDGET: bytes of bodies held at once, all requests
    url_timeout: float = DEFAULT_URL_TIMEOUT  # BIRDCLF_URL_TIMEOUT: seconds for all image URLs of one request
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT  # BIRDCLF_REQUEST_TIMEOUT: seconds for one whole request
    allow_private_urls: bool = False  # BIRDCLF_ALLOW_PRIVATE_URLS: let URLs reach loopback/private hosts (tests)
    cors_origins: tuple[str, ...] = ()  # BIRDCLF_CORS_ORIGINS
    bird_threshold: float | None = None  # BIRDCLF_BIRD_THRESHOLD; None: the model's own
    log_level: str = "INFO"  # BIRDCLF_LOG_LEVEL
    api_url: str = DEFAULT_API_URL  # BIRDCLF_API_URL: where the web app finds the prediction API
    api_key: str = ""  # BIRDCLF_API_KEY: the function key the web app sends
    api_timeout: float = DEFAULT_API_TIMEOUT  # BIRDCLF_API_TIMEOUT: seconds the web app waits for all photos
    weights_url: str | None = None  # BIRDCLF_WEIGHTS_URL: training weights instead of the timm hub

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the environment; every bad value is named in one SettingsError."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str, parse: Callable[[str], Any], default: Any) -> Any:
            return _env(name, parse, default, env, problems)

        settings = cls(
            model=get(ENV_MODEL, str, None),
            home=get(ENV_HOME, lambda s: Path(s).expanduser(), Path.home() / ".cache" / "birdclf"),
            threads=get(ENV_THREADS, _positive(int, 0, 1024), None),
            max_bytes=get(ENV_MAX_BYTES, _positive(parse_size), DEFAULT_MAX_BYTES),
            max_pixels=get(ENV_MAX_PIXELS, _positive(parse_size), DEFAULT_MAX_PIXELS),
            max_images=get(ENV_MAX_IMAGES, _positive(int, 0, 1000), DEFAULT_MAX_IMAGES),
            decode_memory=get(ENV_DECODE_MEMORY, _positive(parse_size), DEFAULT_DECODE_MEMORY),
            upload_budget=get(ENV_UPLOAD_BUDGET, _positive(parse_size), DEFAULT_UPLOAD_BUDGET),
            url_timeout=get(ENV_URL_TIMEOUT, _positive(float, 0, 600), DEFAULT_URL_TIMEOUT),
            request_timeout=get(ENV_REQUEST_TIMEOUT, _positive(float, 0, 3600), DEFAULT_REQUEST_TIMEOUT),
            allow_private_urls=get(ENV_ALLOW_PRIVATE_URLS, parse_bool, False),
            cors_origins=get(ENV_CORS_ORIGINS, _origins, ()),
            bird_threshold=get(ENV_BIRD_THRESHOLD, _positive(float, 0, 1, inclusive=True), None),
            log_level=get(ENV_LOG_LEVEL, _log_level, "INFO"),
            api_url=get(ENV_API_URL, lambda s: s.rstrip("/"), DEFAULT_API_URL),
            api_key=get(ENV_API_KEY, str, ""),
            api_timeout=get(ENV_API_TIMEOUT, _positive(float, 0, 3600), DEFAULT_API_TIMEOUT),
            weights_url=get(ENV_WEIGHTS_URL, str, None),
        )
        if problems:
            raise SettingsError("bad setting: " + "; ".join(problems))
        return settings

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        return replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The settings as a dict without secrets (for logs)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["api_key"] = "***" if self.api_key else ""
        if isinstance(out["model"], str) and "?" in out["model"]:
            out["model"] = out["model"].split("?", 1)[0] + "?***"  # SAS tokens stay out of logs
        return out


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, parsed from the environment on first use (raises SettingsError if invalid)."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget the parsed settings, so the next get_settings() reads the environment again (tests, notebooks)."""
    get_settings.cache_clear()
