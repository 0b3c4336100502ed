"""Shared fixtures: synthetic images, a tiny exported model, the real starter model, servers on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.common import free_port  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub in tests
for _name in [k for k in os.environ if k.startswith("BIRDCLF_")]:  # the developer's own settings stay out of tests
    del os.environ[_name]


@pytest.fixture(autouse=True)
def fresh_settings():
    """Every test parses the environment anew (settings are otherwise parsed once per process)."""
    from birdclf.settings import reset_settings

    reset_settings()
    yield
    reset_settings()


def make_image(width: int = 64, height: int = 48, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0,
               **save: object) -> bytes:
    """A deterministic synthetic image: a colour gradient with a seeded blob, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                     np.full_like(x, int(rng.integers(0, 255)))], axis=-1).astype(np.uint8)
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    base[(y - cy) ** 2 + (x - cx) ** 2 < (min(width, height) // 4) ** 2] = rng.integers(0, 255, 3)
    img = Image.fromarray(base).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Wait until `url` answers with any HTTP status (fail at once if `process` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip when this clone has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_torch_model():
    """A small untrained CNN with 3 classes (fast to export)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_config():
    from birdclf.config import ModelConfig

    return ModelConfig(model_name="tiny", labels=("ALPHA BIRD", "BETA BIRD", "GAMMA BIRD"), input_size=32,
                       resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       version="7")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_torch_model, tiny_config) -> Path:
    """The tiny model exported with birdclf's exporter."""
    from birdclf.training.export import export_onnx

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(tiny_torch_model, path, tiny_config)
    return path


@pytest.fixture(scope="session")
def birdclf_home(tmp_path_factory) -> Path:
    """A private BIRDCLF_HOME holding the real starter model, built once per test session."""
    home = tmp_path_factory.mktemp("birdclf_home")
    from birdclf.training.starter import build_starter

    build_starter(home / "starter.onnx")
    return home


@pytest.fixture(scope="session")
def starter_onnx(birdclf_home) -> Path:
    return birdclf_home / "starter.onnx"


@dataclasses.dataclass
class ServerProcess:
    """A running `birdclf serve`: its base URL (…/api), process and log file."""

    base: str
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def api_process(home: Path, env: dict | None = None, args: tuple[str, ...] = (), wait: bool = True,
                python: str = sys.executable, cwd: str | os.PathLike | None = None,
                port: int | None = None) -> Iterator[ServerProcess]:
    """`birdclf serve` (uvicorn) in its own process on a loopback port (default: a free one), logging to a file."""
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BIRDCLF_")}
    full_env.update({"BIRDCLF_HOME": str(home), "BIRDCLF_THREADS": "1", **(env or {})})
    log = Path(tempfile.mkstemp(prefix="birdclf-serve-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen([python, "-m", "birdclf", "serve", "--port", str(port), *args], env=full_env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    server = ServerProcess(f"http://127.0.0.1:{port}/api", proc, log)
    try:
        if wait:
            wait_http(f"{server.base}/health", process=proc)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def api_server(birdclf_home):
    """`birdclf serve` with the starter model and small limits (2 MB, 4 Mpx, 4 images per request)."""
    env = {"BIRDCLF_MAX_BYTES": "2000000", "BIRDCLF_MAX_PIXELS": "4000000", "BIRDCLF_MAX_IMAGES": "4"}
    with api_process(birdclf_home, env) as server:
        yield server.base


def make_bird_dataset(root: Path, per_split: dict | None = None) -> Path:
    """A tiny Kaggle-layout data set (the library's generator, also used by the notebooks' smoke mode)."""
    from birdclf.data.synthetic import make_synthetic_birds

    return make_synthetic_birds(root, per_split)


@pytest.fixture
def bird_dataset(tmp_path) -> Path:
    """A fresh tiny data set per test (tests may move files)."""
    return make_bird_dataset(tmp_path / "birds")


@pytest.fixture(scope="session")
def shared_bird_dataset(tmp_path_factory) -> Path:
    """One tiny data set for read-only training tests."""
    return make_bird_dataset(tmp_path_factory.mktemp("data") / "birds", {"train": 12, "valid": 4, "test": 4})


def clean_env(**extra: str) -> dict:
    """The environment for a command that must not see this checkout's venv or settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BIRDCLF_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env | extra


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """birdclf's wheel, built from the checkout the way `pip wheel` / `python -m build` would."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)], check=True,
                   capture_output=True, timeout=600)
    (path,) = out.glob("birdclf-*.whl")
    return path




def fake_colab(monkeypatch, **parts: object) -> None:
    """Make `google.colab` importable with the given parts (drive, userdata), as on Colab."""
    import types

    google, colab = types.ModuleType("google"), types.ModuleType("google.colab")
    for name, part in parts.items():
        setattr(colab, name, part)
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
