"""`birdclf serve`: the API under uvicorn, speaking h11 through the hardened protocol (hardening.protocol)."""

from __future__ import annotations

import logging
import os
from typing import Any

from ..constants import DEFAULT_FUNCTION_PORT, DEFAULT_HOST, MAX_TINY_PIECES, MIN_MEAN_PIECE
from .hardening.protocol import BACKLOG, HEADER_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS, GuardedH11Protocol

__all__ = ["GuardedH11Protocol", "serve", "uvicorn_config", "HEADER_TIMEOUT_S", "MAX_CONNECTIONS", "BACKLOG",
           "MAX_TINY_PIECES", "MIN_MEAN_PIECE"]

logger = logging.getLogger(__name__)

def uvicorn_config(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_FUNCTION_PORT, **kwargs: Any) -> Any:
    """The uvicorn Config birdclf serves with: h11, no Server header, our access log, bounded everything."""
    import uvicorn

    options: dict[str, Any] = {"http": GuardedH11Protocol, "ws": "none", "lifespan": "on", "backlog": BACKLOG,
                               "timeout_keep_alive": KEEP_ALIVE_S, "server_header": False, "access_log": False,
                               "log_config": None, "h11_max_incomplete_event_size": 16 * 1024,
                               "timeout_graceful_shutdown": 5}
    options.update(kwargs)
    return uvicorn.Config(app, host=host, port=port, **options)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_FUNCTION_PORT, model: str | os.PathLike | None = None) -> None:
    """Run the API (the same app Azure runs) until interrupted."""
    import uvicorn

    from ..errors import SettingsError
    from ..logs import configure_logging
    from ..settings import get_settings
    from .service import create_app

    try:
        settings = get_settings()
    except SettingsError:  # reported by the app itself: create_app keeps it, /api/health says "misconfigured"
        settings = None
    configure_logging(settings.log_level if settings else "INFO")
    app = create_app(settings, model=str(model) if model else None)
    server = uvicorn.Server(uvicorn_config(app, host, port))
    logger.info("birdclf API on http://%s:%d/api/predict (docs: http://%s:%d/api/docs)", host, port, host, port)
    print(f"birdclf API serving on http://{host}:{port}/api/predict   docs: http://{host}:{port}/api/docs",
          flush=True)
    server.run()
