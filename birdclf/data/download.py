"""Get the data: the Kaggle BIRDS 525 set through the official client, or any archive URL, with resume and checks."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

from ..errors import DataError

__all__ = ["KAGGLE_DATASET", "download_url", "sha256_of", "extract_archive", "find_data_root", "download_kaggle",
           "parse_kaggle_source", "kaggle_credentials", "data_origin", "ORIGIN_FILE", "get_data"]

KAGGLE_DATASET = "gpiosenka/100-bird-species"  # BIRDS 525 SPECIES - IMAGE CLASSIFICATION
ORIGIN_FILE = "birdclf-origin.json"  # what was downloaded, and when: the model card names it
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


def parse_kaggle_source(source: str) -> tuple[str, int | None]:
    """'kaggle', 'kaggle:owner/name' or 'kaggle:owner/name/<version>' -> (owner/name, version or None: newest)."""
    spec = source.split(":", 1)[1] if ":" in source else KAGGLE_DATASET
    parts = spec.strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise DataError(f"not a Kaggle dataset: {source!r} (use kaggle:owner/name or kaggle:owner/name/VERSION)")
    if len(parts) == 3 and not parts[2].isdigit():
        raise DataError(f"the Kaggle dataset version must be a number: {source!r} (e.g. kaggle:{KAGGLE_DATASET}/1)")
    return "/".join(parts[:2]), int(parts[2]) if len(parts) == 3 else None


def kaggle_credentials() -> str:
    """Where the Kaggle credentials come from: KAGGLE_USERNAME/KAGGLE_KEY, a kaggle.json (~/.kaggle,
    $KAGGLE_CONFIG_DIR, or uploaded to the current folder), or Colab Secrets; DataError in one sentence if none."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "environment"
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    if (config_dir / "kaggle.json").is_file():
        return str(config_dir / "kaggle.json")
    if Path("kaggle.json").is_file():  # uploaded into Colab's /content
        os.environ["KAGGLE_CONFIG_DIR"] = str(Path.cwd())
        return str(Path.cwd() / "kaggle.json")
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"] = userdata.get("KAGGLE_USERNAME"), \
            userdata.get("KAGGLE_KEY")
        return "Colab Secrets"
    except ImportError:
        pass
    except Exception as exc:  # a secret missing, or not shared with this notebook
        raise DataError("Colab Secrets lack KAGGLE_USERNAME and KAGGLE_KEY (or this notebook may not read them): "
                        "add both in the key icon on the left, or upload kaggle.json") from exc
    raise DataError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, put kaggle.json in ~/.kaggle/ "
                    "(Kaggle > Settings > API > Create New Token), or on Colab add both as Secrets")


def download_kaggle(dest: str | os.PathLike, dataset: str = KAGGLE_DATASET, version: int | None = None) -> Path:
    """Download and extract a Kaggle dataset (a given version, else the newest) with the official client."""
    dest = Path(dest)
    source = kaggle_credentials()
    try:  # some versions of the client authenticate on import, and exit when that fails
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise DataError("the Kaggle client is missing: pip install kaggle (in the train extra)") from exc
    except BaseException as exc:
        raise DataError(f"the Kaggle client refused the credentials from {source}: {exc}") from exc
    api = KaggleApi()
    try:
        api.authenticate()
    except BaseException as exc:  # the client raises OSError or exits when no credentials exist
        raise DataError(f"the Kaggle client refused the credentials from {source}: {exc}") from exc
    slug = dataset.split("/")[1]
    folder = dest / (f"{slug}-v{version}" if version else slug)  # versions never overwrite each other
    folder.mkdir(parents=True, exist_ok=True)
    try:
        api.dataset_download_files(f"{dataset}/{version}" if version else dataset, path=str(folder), unzip=False,
                                   quiet=False)
    except Exception as exc:
        raise DataError(f"Kaggle download of {dataset}{f' version {version}' if version else ''} failed: "
                        f"{exc}") from exc
    archive = folder / f"{slug}.zip"  # the client names it after the dataset, whatever the version
    if not archive.is_file():
        raise DataError(f"the Kaggle client wrote no {archive.name} in {folder}")
    extracted = extract_archive(archive, folder / "extracted")
    origin = {"source": f"kaggle:{dataset}" + (f"/{version}" if version else ""), "dataset": dataset,
              "version": version if version else "the newest when downloaded",
              "downloaded": time.strftime("%Y-%m-%d", time.gmtime())}
    (extracted / ORIGIN_FILE).write_text(json.dumps(origin, indent=2) + "\n")
    return find_data_root(extracted)


def data_origin(data: str | os.PathLike) -> dict | None:
    """Where a data folder came from, as `birdclf data download` recorded it (in the folder or up to three above
    it), or None for data that came otherwise."""
    folder = Path(data).resolve()
    for candidate in [folder, *list(folder.parents)[:3]]:
        record = candidate / ORIGIN_FILE
        if record.is_file():
            try:
                return json.loads(record.read_text())
            except (OSError, ValueError):
                return None
    return None


def get_data(source: str, dest: str | os.PathLike, sha256: str | None = None) -> Path:
    """'kaggle' (or 'kaggle:owner/name'), an archive URL, or a local folder -> the data root to train from."""
    dest = Path(dest)
    if source == "kaggle" or source.startswith("kaggle:"):
        return download_kaggle(dest, *parse_kaggle_source(source))
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


