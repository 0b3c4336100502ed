"""Which ONNX file to serve: an explicit path, BIRDCLF_MODEL (a path or an http(s) URL, downloaded once), a
model.onnx beside the function app, or the starter model in BIRDCLF_HOME."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from ..constants import ENV_MODEL, MODEL_FILENAME, STARTER_FILENAME
from ..errors import ModelNotFoundError
from ..settings import Settings, get_settings

__all__ = ["default_home", "is_url", "resolve_model_path", "download_model", "MAX_MODEL_BYTES"]

logger = logging.getLogger(__name__)

MAX_MODEL_BYTES = 2 * 1024**3  # a model download larger than this is refused
_DOWNLOAD_DEADLINE_S = 300.0
_CHUNK = 1 << 20


def default_home(settings: Settings | None = None) -> Path:
    """Where birdclf keeps built and downloaded models: $BIRDCLF_HOME or ~/.cache/birdclf."""
    return (settings or get_settings()).home


def is_url(text: str | os.PathLike | None) -> bool:
    """Whether a model setting is an http(s) URL rather than a path."""
    return isinstance(text, str) and text.strip().lower().startswith(("http://", "https://"))


def download_model(url: str, home: Path, deadline_s: float = _DOWNLOAD_DEADLINE_S) -> Path:
    """Download a model URL once into home/downloaded/ (named by the URL's hash, so a changed URL is fetched anew)."""
    name = Path(urlsplit(url).path).name or MODEL_FILENAME
    target = home / "downloaded" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.part")
    started = time.monotonic()
    logger.info("downloading the model from %s", url.split("?", 1)[0])
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(partial, "wb") as out:
            total = 0
            while chunk := resp.read(_CHUNK):
                total += len(chunk)
                if total > MAX_MODEL_BYTES:
                    raise ModelNotFoundError(f"the model at {ENV_MODEL} is over {MAX_MODEL_BYTES} bytes")
                if time.monotonic() - started > deadline_s:
                    raise ModelNotFoundError(f"the model download took longer than {deadline_s:g} s")
                out.write(chunk)
        os.replace(partial, target)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot download the model from {ENV_MODEL}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    logger.info("model downloaded: %d bytes in %.1f s", target.stat().st_size, time.monotonic() - started)
    return target


def resolve_model_path(model: str | os.PathLike | None = None, settings: Settings | None = None,
                       beside: str | os.PathLike | None = None) -> Path:
    """The model to load: `model`, else $BIRDCLF_MODEL, else model.onnx in `beside`, else the starter model."""
    settings = settings or get_settings()
    chosen = model or settings.model
    if chosen and is_url(str(chosen)):
        return download_model(str(chosen).strip(), settings.home)
    if not chosen and beside is not None and (Path(beside) / MODEL_FILENAME).is_file():
        chosen = Path(beside) / MODEL_FILENAME
    path = Path(chosen or settings.home / STARTER_FILENAME).expanduser()
    if not path.is_file():
        hint = "" if chosen else " (build it with `birdclf starter`)"
        raise ModelNotFoundError(f"no model file at {path}{hint}; set {ENV_MODEL} or pass --model")
    return path
