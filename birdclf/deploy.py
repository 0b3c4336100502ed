"""Package a model (and the birdclf serving code) into azure_function/ for `func azure functionapp publish`."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from .constants import MODEL_FILENAME
from .errors import BirdclfError
from .localserver import function_dir

__all__ = ["VENDOR_MARKER", "package_function"]

VENDOR_MARKER = ".vendored-by-birdclf"


def package_function(model: str | Path, dest: str | Path | None = None, force: bool = False) -> dict[str, str]:
    """Copy a verified model to dest/model.onnx and birdclf's code to dest/birdclf; never overwrite silently."""
    from .inference import Predictor

    model, dest = Path(model), Path(dest or function_dir())
    info = Predictor(model, threads=1).info()  # refuses files that are not birdclf models
    target = dest / MODEL_FILENAME
    if target.exists() and not filecmp.cmp(model, target, shallow=False):
        if not force:
            raise BirdclfError(f"{target} already holds another model; pass --force to replace it "
                               f"(the old one is kept as {target.name}.bak)")
        shutil.copy2(target, target.with_name(target.name + ".bak"))
    if not target.exists() or not filecmp.cmp(model, target, shallow=False):
        shutil.copy2(model, target)
    package = Path(__file__).resolve().parent
    vendored = dest / "birdclf"
    if vendored.exists() and not (vendored / VENDOR_MARKER).exists():
        raise BirdclfError(f"{vendored} exists and was not written by birdclf: move it away first")
    if vendored.exists():
        shutil.rmtree(vendored)
    shutil.copytree(package, vendored, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (vendored / VENDOR_MARKER).write_text("copied by `birdclf package-function`; safe to delete\n")
    return {"model": str(target), "code": str(vendored), "model_name": info["model_name"],
            "version": info["version"]}
