"""The one-command demo: the local prediction API plus the Voila web app, started and stopped together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .constants import ENV_API_URL, ENV_MODEL
from .errors import BirdclfError, ModelNotFoundError
from .settings import get_settings

__all__ = ["ensure_model", "wait_for_http", "run_demo"]


def ensure_model(model: str | None = None) -> Path:
    """The model to serve: given, $BIRDCLF_MODEL, ./azure_function/model.onnx, else the starter (built once)."""
    from .serving.model_source import resolve_model_path

    try:
        return resolve_model_path(model, beside=Path("azure_function"))
    except ModelNotFoundError:
        if model or get_settings().model:
            raise
    from .training.starter import build_starter

    print("building the offline starter model (once, ~20 s)...", flush=True)
    return build_starter()[0]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BirdclfError(f"{' '.join(map(str, process.args[1:4]))} exited with code {process.returncode} "
                               f"before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise BirdclfError(f"{url} did not answer within {timeout:.0f} s")


def _raise_keyboard_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _stop_on_ctrl_c_and_sigterm() -> None:
    """Ctrl-C and SIGTERM stop the demo, also when started with SIGINT ignored (a background job of a script)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # children then start with SIGINT at its default too
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def run_demo(model: str | None, host: str, function_port: int, app_port: int) -> int:
    """Start both servers, print their URLs, and stop both on Ctrl-C or when either exits."""
    from .webapp import NOTEBOOK

    _stop_on_ctrl_c_and_sigterm()
    model_path = ensure_model(model)
    api_url = f"http://{host}:{function_port}/api"
    env = dict(os.environ, **{ENV_MODEL: str(model_path.resolve()), ENV_API_URL: api_url})
    procs = [subprocess.Popen([sys.executable, "-m", "birdclf", "serve", "--host", host, "--port",
                               str(function_port)], env=env)]
    try:
        wait_for_http(f"{api_url}/health", 60, procs[0])
        procs.append(subprocess.Popen([sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser",
                                       f"--port={app_port}", f"--Voila.ip={host}"], env=env, cwd=NOTEBOOK.parent))
        wait_for_http(f"http://{host}:{app_port}/", 240, procs[1])
        print(f"\n  prediction API: {api_url}/predict   (docs: {api_url}/docs; model: {model_path})"
              f"\n  web app:        http://{host}:{app_port}/\n\n  Ctrl-C stops both.\n", flush=True)
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
