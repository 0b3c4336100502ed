"""Every BIRDCLF_* environment variable, parsed once (pydantic-settings) into one typed, validated object."""

from __future__ import annotations

import contextvars
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

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
    ENV_PREFIX,
)
from .errors import SettingsError

Source = PydanticBaseSettingsSource

__all__ = ["Settings", "get_settings", "reset_settings", "parse_size", "parse_bool"]

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KB": 10**3, "MB": 10**6, "GB": 10**9,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]I?B?)?\s*$", re.IGNORECASE)
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("birdclf_environ", default=None)


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


def _text_as(parse: Any) -> BeforeValidator:
    """Parse text with `parse`; values that are already typed (keyword arguments) pass through."""
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str) else value)


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


Size = Annotated[int, _text_as(parse_size), Field(gt=0)]  # bytes or pixels: "20MB", "20 MiB", "50M", 20971520
Seconds = Annotated[float, Field(gt=0)]


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over os.environ or a given mapping, each value stripped of the
    whitespace a copy-paste leaves (a key with a newline), and a blank value meaning the default."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value.strip() for name, value in self._environ.items() if value.strip()}


class Settings(BaseSettings):
    """The whole configuration of birdclf (serving, web app, training); each field is BIRDCLF_<NAME> (README)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    model: Optional[str] = None  # ONNX path or http(s) URL; None: model.onnx beside the app, or the starter
    home: Annotated[Path, AfterValidator(lambda p: p.expanduser())] = Field(
        default_factory=lambda: Path.home() / ".cache" / "birdclf")  # where built models (the starter) are cached
    threads: Optional[Annotated[int, Field(gt=0, le=1024)]] = None  # None: the CPUs this process may use
    max_bytes: Size = DEFAULT_MAX_BYTES  # largest image file
    max_pixels: Size = DEFAULT_MAX_PIXELS  # largest image, width x height
    max_images: Annotated[int, Field(gt=0, le=1000)] = DEFAULT_MAX_IMAGES  # most images in one request
    decode_memory: Size = DEFAULT_DECODE_MEMORY  # bytes of pixels decoded at once, all requests
    upload_budget: Size = DEFAULT_UPLOAD_BUDGET  # bytes of bodies held at once, all requests
    url_timeout: Annotated[Seconds, Field(le=600)] = DEFAULT_URL_TIMEOUT  # seconds for all image URLs of a request
    request_timeout: Annotated[Seconds, Field(le=3600)] = DEFAULT_REQUEST_TIMEOUT  # seconds for one whole request
    allow_private_urls: Annotated[bool, _text_as(parse_bool)] = False  # let URLs reach loopback/private hosts
    cors_origins: Annotated[tuple[str, ...], NoDecode, _text_as(_origins)] = ()  # comma-separated
    bird_threshold: Optional[Annotated[float, Field(ge=0, le=1)]] = None  # None: the model's own
    find: Annotated[bool, _text_as(parse_bool)] = True  # find the bird in the photo, then identify it on a crop
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                         _text_as(lambda s: s.strip().upper())] = "INFO"
    api_url: Annotated[str, AfterValidator(lambda s: s.rstrip("/"))] = DEFAULT_API_URL  # the web app's API
    api_key: str = ""  # the function key the web app sends
    api_timeout: Annotated[Seconds, Field(le=3600)] = DEFAULT_API_TIMEOUT  # seconds the web app waits, all photos
    weights_url: Optional[str] = None  # training weights instead of the timm hub

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Source,
                                   env_settings: Source, dotenv_settings: Source,
                                   file_secret_settings: Source) -> tuple[Source, ...]:
        """Keyword arguments, then the environment (os.environ, or the mapping given to from_env); no .env files."""
        environ = _ENVIRON.get()
        return init_settings, _MappingSource(settings_cls, os.environ if environ is None else environ)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the environment (os.environ by default); every bad value is named in one SettingsError."""
        return cls._build(environ)

    @classmethod
    def defaults(cls) -> Settings:
        """The documented defaults, whatever the environment holds."""
        return cls._build({})

    def with_(self, **changes: Any) -> Settings:
        """A validated copy with some fields changed (unknown names are a TypeError, bad values a SettingsError)."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        return self._build({}, **{**self.model_dump(), **changes})

    @classmethod
    def _build(cls, environ: Mapping[str, str] | None, **values: Any) -> Settings:
        token = _ENVIRON.set(environ)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError("bad setting: " + "; ".join(_problem(error) for error in exc.errors())) from None
        finally:
            _ENVIRON.reset(token)

    def public(self) -> dict[str, Any]:
        """The settings as a dict without secrets (for logs)."""
        out = self.model_dump()
        out["api_key"] = "***" if self.api_key else ""
        if isinstance(out["model"], str) and "?" in out["model"]:
            out["model"] = out["model"].split("?", 1)[0] + "?***"  # SAS tokens stay out of logs
        return out


def _problem(error: Mapping[str, Any]) -> str:
    """One pydantic error as 'BIRDCLF_NAME='value': what was expected'."""
    name = ENV_PREFIX + ".".join(str(part) for part in error["loc"][:1]).upper()
    return f"{name}={error['input']!r}: {error['msg']}"


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, parsed from the environment on first use (raises SettingsError if invalid)."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget the parsed settings, so the next get_settings() reads the environment again (tests, notebooks)."""
    get_settings.cache_clear()
