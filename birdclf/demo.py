"""The one-command demo: the local prediction function plus the Voila app, started and stopped together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .constants import ENV_API_URL, ENV_MODEL
from .errors import BirdclfError

__all__ = ["repo_root", "ensure_model", "wait_for_http", "run_demo"]


def repo_root() -> Path:
    """The checkout holding app.ipynb and azure_function/."""
    return Path(__file__).resolve().parents[1]


def ensure_model(model: str | None = None) -> Path:
    """The model to serve: given, $BIRDCLF_MODEL, a packaged azure_function/model.onnx, else the starter (built)."""
    from .api import resolve_service_model
    from .starter import build_starter, starter_path

    chosen = model or resolve_service_model(repo_root() / "azure_function")
    if chosen:
        if not Path(chosen).is_file():
            raise BirdclfError(f"model not found: {chosen}")
        return Path(chosen)
    if not starter_path().is_file():
        print("building the offline starter model (once, ~20 s)...", flush=True)
        build_starter()
    return starter_path()


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BirdclfError(f"{process.args[2] if len(process.args) > 2 else process.args} exited with "
                               f"code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise BirdclfError(f"{url} did not answer within {timeout:.0f} s")


def run_demo(model: str | None, host: str, function_port: int, app_port: int) -> int:
    """Start both servers, print their URLs, and stop both on Ctrl-C or when either exits."""
    model_path = ensure_model(model)
    api_url = f"http://{host}:{function_port}/api"
    env = dict(os.environ, **{ENV_MODEL: str(model_path.resolve()), ENV_API_URL: api_url})
    root = repo_root()
    procs = [subprocess.Popen([sys.executable, "-m", "birdclf", "serve", "--host", host, "--port",
                               str(function_port)], env=env, cwd=root)]
    try:
        wait_for_http(f"{api_url}/health", 60, procs[0])
        procs.append(subprocess.Popen([sys.executable, "-m", "voila", "app.ipynb", "--no-browser",
                                       f"--port={app_port}", f"--Voila.ip={host}"], env=env, cwd=root))
        wait_for_http(f"http://{host}:{app_port}/", 120, procs[1])
        print(f"\n  prediction function: {api_url}/predict   (model: {model_path})"
              f"\n  web app:             http://{host}:{app_port}/\n\n  Ctrl-C stops both.\n", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
