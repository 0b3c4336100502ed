"""Get the data: the Kaggle BIRDS 525 set through the official client, or any archive URL, with resume and checks."""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from ..errors import DataError

__all__ = ["KAGGLE_DATASET", "download_url", "sha256_of", "extract_archive", "find_data_root", "download_kaggle",
           "get_data"]

KAGGLE_DATASET = "gpiosenka/100-bird-species"  # BIRDS 525 SPECIES - IMAGE CLASSIFICATION
_CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(total: int | None, desc: str):
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None)
    except ImportError:  # pragma: no cover
        return None


def download_url(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download to `dest`, resuming a `.part` file with an HTTP Range request; verify `sha256` if given."""
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            resp = None
        else:
            raise DataError(f"download of {url} failed: HTTP {exc.code}") from exc
    except OSError as exc:
        raise DataError(f"download of {url} failed: {exc}") from exc
    if resp is not None:
        with resp:
            resumed = resp.status == 206
            mode = "ab" if resumed else "wb"
            length = resp.headers.get("Content-Length")
            total = (int(length) + (have if resumed else 0)) if length else None
            bar = _progress(total, dest.name)
            if bar is not None and resumed:
                bar.update(have)
            with open(part, mode) as out:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
    if sha256 and sha256_of(part) != sha256.lower():
        bad = part.with_name(part.name + ".bad")
        os.replace(part, bad)
        raise DataError(f"checksum mismatch for {url}: expected {sha256}, got {sha256_of(bad)} (kept as {bad})")
    os.replace(part, dest)
    return dest


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if root.resolve() not in target.parents and target != root.resolve():
        raise DataError(f"archive member {name!r} would escape {root}: refused")
    return target


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a .zip, .tar, .tar.gz or .tgz into `dest`, refusing members that escape it; skips if done."""
    archive, dest = Path(archive), Path(dest)
    marker = dest / f".extracted-{archive.name}"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                _safe_target(dest, member)
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                _safe_target(dest, member.name)
                if member.issym() or member.islnk():
                    raise DataError(f"archive member {member.name!r} is a link: refused")
            tf.extractall(dest, filter="data")
    else:
        raise DataError(f"{archive} is not a zip or tar archive")
    marker.write_text(sha256_of(archive))
    return dest


def find_data_root(folder: str | os.PathLike) -> Path:
    """The folder holding train/ (Kaggle layout) or the class folders, searching a few levels down."""
    folder = Path(folder)
    for candidate in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if len(candidate.relative_to(folder).parts) > 3:
            continue
        if (candidate / "train").is_dir():
            return candidate
    return folder


def download_kaggle(dest: str | os.PathLike, dataset: str = KAGGLE_DATASET) -> Path:
    """Download and extract a Kaggle dataset with the official client (KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json)."""
    dest = Path(dest)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise DataError("the Kaggle client is missing: pip install kaggle (in the train extra)") from exc
    api = KaggleApi()
    try:
        api.authenticate()
    except BaseException as exc:  # the client raises OSError or exits when no credentials exist
        raise DataError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in "
                        "~/.kaggle/ (Kaggle > Settings > API > Create New Token)") from exc
    dest.mkdir(parents=True, exist_ok=True)
    try:
        api.dataset_download_files(dataset, path=str(dest), unzip=False, quiet=False)
    except Exception as exc:
        raise DataError(f"Kaggle download of {dataset} failed: {exc}") from exc
    archive = dest / f"{dataset.split('/')[-1]}.zip"
    return find_data_root(extract_archive(archive, dest / "extracted"))


def get_data(source: str, dest: str | os.PathLike, sha256: str | None = None) -> Path:
    """'kaggle' (or 'kaggle:owner/name'), an archive URL, or a local folder -> the data root to train from."""
    dest = Path(dest)
    if source == "kaggle" or source.startswith("kaggle:"):
        return download_kaggle(dest, source.split(":", 1)[1] if ":" in source else KAGGLE_DATASET)
    if source.startswith(("http://", "https://")):
        name = Path(source.split("?", 1)[0]).name or "data.archive"
        archive = download_url(source, dest / name, sha256=sha256)
        return find_data_root(extract_archive(archive, dest / "extracted"))
    local = Path(source)
    if local.is_dir():
        return find_data_root(local)
    if local.is_file():
        return find_data_root(extract_archive(local, dest / "extracted"))
    raise DataError(f"data source not found: {source} (use 'kaggle', an archive URL, or a folder)")


