"""`birdclf package-function`: a complete, publishable Azure Functions folder from the installed package alone:
function_app.py, host.json, requirements.txt, .funcignore, local.settings.example.json, the model, and birdclf's
serving code (nothing that imports torch, fastai or timm). Nothing the user wrote is overwritten silently."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..constants import MODEL_FILENAME
from ..errors import BirdclfError

__all__ = ["VENDOR_MARKER", "TEMPLATE_DIR", "TEMPLATE_FILES", "SERVING_MODULES", "TRIMS", "package_function",
           "vendor_code", "build_dependencies"]

VENDOR_MARKER = ".vendored-by-birdclf"
TEMPLATE_DIR = Path(__file__).resolve().parent / "function_template"
TEMPLATE_FILES = ("function_app.py", "host.json", "requirements.txt", ".funcignore", "local.settings.example.json")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# The shared contract at the package's top plus the serving subpackage: all a deployment imports.
SERVING_MODULES = ("__init__.py", "config.py", "constants.py", "errors.py", "formats.py", "settings.py", "logs.py",
                   "serving")
DEFAULT_DEST = "azure_function"


def _backup(path: Path) -> Path:
    backup = path.with_name(path.name + ".bak")
    n = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.bak{n}")
        n += 1
    shutil.copy2(path, backup)
    return backup


def _place(source: Path, target: Path, force: bool, report: dict[str, list[str]]) -> None:
    """Copy `source` to `target`; an existing different file is kept, or with `force` backed up then replaced."""
    if target.exists() and filecmp.cmp(source, target, shallow=False):
        report["unchanged"].append(target.name)
        return
    if target.exists():
        if not force:
            report["kept"].append(target.name)
            return
        report["backups"].append(str(_backup(target)))
    shutil.copy2(source, target)
    report["written"].append(target.name)


def vendor_code(dest: str | os.PathLike) -> Path:
    """Copy birdclf's serving code to dest/birdclf (replacing an earlier copy made by this function only)."""
    vendored = Path(dest) / "birdclf"
    if vendored.exists() and not (vendored / VENDOR_MARKER).exists():
        raise BirdclfError(f"{vendored} exists and was not written by birdclf: move it away first")
    if vendored.exists():
        shutil.rmtree(vendored)
    vendored.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "function_template")
    for name in SERVING_MODULES:
        source = PACKAGE_DIR / name
        if source.is_dir():
            shutil.copytree(source, vendored / name, ignore=ignore)
        else:
            shutil.copy2(source, vendored / name)
    (vendored / VENDOR_MARKER).write_text("copied by `birdclf package-function`; safe to delete\n")
    return vendored


# What CPU serving never loads, removed from a local build (measured savings, MiB, onnxruntime 1.25 / numpy 2.4 /
# Pillow 13): onnxruntime's C-API library for other packages (21.7; its Python module does not load it) and its
# offline tools (7.7), numpy's own test suites (14.7), Pillow's AVIF codec (4.8) and text rendering (3.3).
TRIMS: dict[str, tuple[str, ...]] = {
    "onnxruntime C library": ("onnxruntime/capi/libonnxruntime.so*",),
    "onnxruntime tools": ("onnxruntime/tools", "onnxruntime/transformers", "onnxruntime/quantization",
                          "onnxruntime/datasets"),
    "numpy tests": ("numpy/**/tests",),
    "Pillow AVIF": ("PIL/_avif*.so", "pillow.libs/libavif*"),
    "Pillow fonts": ("PIL/_imagingft*.so", "pillow.libs/libfreetype*", "pillow.libs/libharfbuzz*",
                     "pillow.libs/libbrotli*", "pillow.libs/libpng16*"),
}
_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux2014_x86_64")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() or f.is_symlink())
    return path.lstat().st_size if path.exists() or path.is_symlink() else 0


def build_dependencies(dest: str | os.PathLike, python: str = sys.executable) -> dict[str, Any]:
    """A local build for `func azure functionapp publish APP --no-build`: requirements.txt installed into
    dest/.python_packages/lib/site-packages for Azure's Linux x86-64 Python 3.11, then TRIMS removed."""
    site = Path(dest) / ".python_packages" / "lib" / "site-packages"
    if site.parent.parent.exists():
        shutil.rmtree(site.parent.parent)
    compile_flag = [] if sys.version_info[:2] == (3, 11) else ["--no-compile"]  # other .pyc would be dead weight
    command = [python, "-m", "pip", "install", "--quiet", "--isolated", "--target", str(site), "--only-binary=:all:",
               "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *compile_flag,
               *[arg for platform in _PLATFORMS for arg in ("--platform", platform)],
               "-r", str(Path(dest) / "requirements.txt")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BirdclfError(f"pip could not install the function's requirements: {done.stderr.strip()[-500:]}")
    removed: dict[str, int] = {}
    for name, patterns in TRIMS.items():
        paths = sorted({p for pattern in patterns for p in site.glob(pattern)}, key=lambda p: -len(p.parts))
        removed[name] = sum(_size(p) for p in paths)
        for path in paths:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return {"site_packages": str(site), "bytes": _size(site), "removed_bytes": removed}


def package_function(model: str | os.PathLike, dest: str | os.PathLike | None = None,
                     force: bool = False, build: bool = False) -> dict[str, Any]:
    """Write a publishable function folder at `dest` (default ./azure_function, created if missing) with `model`
    (checked to be a birdclf model) as model.onnx. Different existing files are kept unless `force`, which keeps
    the old ones as .bak; a different model is never replaced without `force`. With `build`, also install the
    trimmed dependencies for publishing with --no-build (see `build_dependencies`)."""
    from .predictor import Predictor

    model, dest = Path(model), Path(dest or DEFAULT_DEST)
    info = Predictor(model, threads=1).info()  # refuses files that are not birdclf models
    target = dest / MODEL_FILENAME
    if target.exists() and not filecmp.cmp(model, target, shallow=False) and not force:
        raise BirdclfError(f"{target} already holds another model; pass --force to replace it "
                           f"(the old one is kept as {target.name}.bak)")
    dest.mkdir(parents=True, exist_ok=True)
    report: dict[str, list[str]] = {"written": [], "unchanged": [], "kept": [], "backups": []}
    for name in TEMPLATE_FILES:
        _place(TEMPLATE_DIR / name, dest / name, force, report)
    _place(model, target, force, report)
    vendored = vendor_code(dest)
    out = {"dest": str(dest), "model": str(target), "code": str(vendored), "model_name": info["model_name"],
           "version": info["version"], **report}
    if build:
        out["build"] = build_dependencies(dest)
    return out
