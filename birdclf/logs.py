"""Logging set-up: birdclf logs through the standard `logging` module (what Azure forwards to Application
Insights); a command-line server gets a plain one-line format on stderr."""

from __future__ import annotations

import logging
import sys

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send birdclf's (and uvicorn's) records to stderr at `level`, unless the host already configured logging."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("birdclf", "uvicorn.error"):
        logging.getLogger(name).setLevel(level)
