"""Data: layout, label names, checks (quarantine, duplicates, leakage), splits, subsets, download and extraction."""

from __future__ import annotations

import http.server
import io
import os
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from birdclf.data.check import check_dataset
from birdclf.data.download import (
    download_kaggle,
    download_url,
    extract_archive,
    get_data,
    parse_kaggle_source,
    sha256_of,
)
from birdclf.data.labels import label_map, label_slug, normalize_label
from birdclf.data.layout import list_images, read_dataset
from birdclf.data.split import dataset_stats, make_splits, materialize, mini_subset
from birdclf.errors import DataError
from tests.conftest import fake_colab, make_image


def test_kaggle_layout_and_labels(bird_dataset):
    ds = read_dataset(bird_dataset)
    assert set(ds.items) == {"train", "valid", "test"} and len(ds.items["train"]) == 30
    assert "RED  CARDINAL" in ds.classes  # the original folder text is kept
    assert normalize_label("RED  CARDINAL") == "RED CARDINAL" and label_slug("GREEN & BLUE JAY") == "GREEN_AND_BLUE_JAY"
    assert label_map(ds.classes)["RED  CARDINAL"] == "RED CARDINAL"
    with pytest.raises(DataError, match="same species"):
        label_map(["A  B", "A B"])


def test_folder_per_class_layout(tmp_path, bird_dataset):
    flat = tmp_path / "flat"
    shutil.copytree(bird_dataset / "train", flat)
    ds = read_dataset(flat)
    assert list(ds.items) == ["train"] and len(ds.classes) == 3
    with pytest.raises(DataError, match="no images"):
        read_dataset(tmp_path / "flat" / "BLUE BUNTING")


def test_check_quarantines_finds_duplicates_and_leakage(bird_dataset, tmp_path):
    train = bird_dataset / "train" / "BLUE BUNTING"
    (train / "broken.jpg").write_bytes((train / "1.jpg").read_bytes()[:200])
    (train / "empty.jpg").write_bytes(b"")
    shutil.copy(train / "2.jpg", bird_dataset / "test" / "BLUE BUNTING" / "leaked.jpg")  # exact, across splits
    img = Image.open(train / "3.jpg")
    img.resize((144, 120)).save(train / "3-big.png")  # near duplicate within train
    before = len(list_images(bird_dataset))
    report = check_dataset(read_dataset(bird_dataset), quarantine_dir=tmp_path / "quarantine")
    summary = report.summary()
    assert summary["invalid"] == 2 and summary["quarantined"] == 2
    assert (tmp_path / "quarantine" / "train" / "BLUE BUNTING" / "broken.jpg").exists()  # moved, not deleted
    assert len(list_images(bird_dataset)) + 2 == before
    assert any(d["kind"] == "exact" and d["split_a"] != d["split_b"] for d in report.leakage)
    assert any(d["kind"] == "near" and "3-big.png" in d["a"] + d["b"] for d in report.duplicates)
    folder = report.write(tmp_path / "report")
    assert "leaked.jpg" in (folder / "leakage.csv").read_text()


def test_quarantine_never_overwrites(bird_dataset, tmp_path):
    from birdclf.data.check import quarantine

    a = bird_dataset / "train" / "BLUE BUNTING" / "1.jpg"
    b = bird_dataset / "valid" / "BLUE BUNTING" / "1.jpg"
    moved = quarantine([a], bird_dataset / "train", tmp_path / "q")
    moved += quarantine([b], bird_dataset / "valid", tmp_path / "q")
    assert len({to for _, to in moved}) == 2 and all(Path(to).exists() for _, to in moved)


def test_splits_are_seeded_and_stratified(bird_dataset):
    ds = read_dataset(bird_dataset)
    given = make_splits(ds, "given")
    assert len(given["valid"]) == 12 and given["train"][0][1] in {"RED CARDINAL", "GREEN & BLUE JAY", "BLUE BUNTING"}
    a, b = make_splits(ds, "random", 0.25, seed=1), make_splits(ds, "random", 0.25, seed=1)
    c = make_splits(ds, "random", 0.25, seed=2)
    assert a == b and a != c
    assert len(a["train"]) + len(a["valid"]) == 42 and len(a["test"]) == 12
    assert {label for _, label in a["valid"]} == {"RED CARDINAL", "GREEN & BLUE JAY", "BLUE BUNTING"}
    with pytest.raises(DataError):
        make_splits(ds, "sideways")


def test_mini_subset_and_materialize(bird_dataset, tmp_path):
    splits = make_splits(read_dataset(bird_dataset))
    mini = mini_subset(splits, 3, seed=0, max_classes=2)
    assert len(mini["train"]) == 6 and len({label for _, label in mini["train"]}) == 2
    assert mini == mini_subset(splits, 3, seed=0, max_classes=2)
    out = materialize(mini, tmp_path / "mini")
    assert len(list_images(out)) == sum(len(v) for v in mini.values())
    with pytest.raises(DataError, match="not empty"):
        materialize(mini, out)


def test_stats(bird_dataset):
    stats = dataset_stats(make_splits(read_dataset(bird_dataset)))
    assert stats["num_classes"] == 3 and stats["images"]["train"] == 30
    assert stats["image_size"]["most_common"] == ["72x60"] and stats["train_per_class"]["min"] == 10


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (like real mirrors), to test resume."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
            self.server.ranges.append(start)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def archive_server(tmp_path, bird_dataset):
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "birds.tar.gz", "w:gz") as tf:
        tf.add(bird_dataset, arcname="BIRDS")
    handler = lambda *a, **k: RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.ranges = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()


def test_download_resume_checksum_extract(archive_server, tmp_path):
    server, base, served = archive_server
    full = (served / "birds.tar.gz").read_bytes()
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "birds.tar.gz.part").write_bytes(full[:1000])  # an interrupted earlier download
    root = get_data(f"{base}/birds.tar.gz", dest, sha256=sha256_of(served / "birds.tar.gz"))
    assert server.ranges == [1000]  # resumed, not restarted
    assert (dest / "birds.tar.gz").read_bytes() == full
    assert root.name == "BIRDS" and len(read_dataset(root).classes) == 3
    with pytest.raises(DataError, match="checksum mismatch"):
        download_url(f"{base}/birds.tar.gz", tmp_path / "other.tar.gz", sha256="0" * 64)
    assert (tmp_path / "other.tar.gz.part.bad").exists() and not (tmp_path / "other.tar.gz").exists()
    with pytest.raises(DataError, match="HTTP 404"):
        download_url(f"{base}/missing.zip", tmp_path / "missing.zip")


def test_archive_escape_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(DataError, match="escape"):
        extract_archive(evil, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()
    bad = tmp_path / "bad.tgz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    bad.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="link"):
        extract_archive(bad, tmp_path / "out2")


def test_kaggle_without_credentials_explains(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="KAGGLE_USERNAME"):
        download_kaggle(tmp_path / "k")


_FAKE_CLIENT = """
import io, os, zipfile
CALLS = []
if os.environ.get("FAKE_KAGGLE_EXIT_ON_IMPORT"):
    raise SystemExit("Could not find kaggle.json. Make sure it's located in ~/.kaggle")


class KaggleApi:
    def authenticate(self):
        pass

    def dataset_download_files(self, dataset, path=None, unzip=False, quiet=True):
        CALLS.append(dataset)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for split in ("train", "valid", "test"):
                zf.writestr(f"{split}/ABBOTTS BABBLER/1.jpg", open(os.environ["FAKE_KAGGLE_IMAGE"], "rb").read())
        slug = dataset.split("/")[1]
        with open(os.path.join(path, slug + ".zip"), "wb") as f:
            f.write(buf.getvalue())
"""


@pytest.fixture
def kaggle_client(tmp_path, monkeypatch):
    """The Kaggle client's download call, played by a local package (Kaggle cannot be reached from here): it
    writes the zip where and as the real client 2.x does (path/<slug>.zip, whatever the version)."""
    import sys

    package = tmp_path / "fake_site" / "kaggle"
    (package / "api").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "api" / "__init__.py").write_text("")
    (package / "api" / "kaggle_api_extended.py").write_text(_FAKE_CLIENT)
    image = tmp_path / "bird.jpg"
    image.write_bytes(make_image())
    monkeypatch.setenv("FAKE_KAGGLE_IMAGE", str(image))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123")
    monkeypatch.syspath_prepend(str(tmp_path / "fake_site"))
    for name in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        sys.modules.pop(name)


@pytest.mark.parametrize("source,expected", [
    ("kaggle", ("gpiosenka/100-bird-species", None)),
    ("kaggle:gpiosenka/100-bird-species", ("gpiosenka/100-bird-species", None)),
    ("kaggle:gpiosenka/100-bird-species/58", ("gpiosenka/100-bird-species", 58)),
    ("kaggle:someone/birds/", ("someone/birds", None))])
def test_kaggle_sources_name_a_dataset_and_maybe_a_version(source, expected):
    assert parse_kaggle_source(source) == expected


@pytest.mark.parametrize("source", ["kaggle:birds", "kaggle:a/b/latest", "kaggle:a//3", "kaggle:a/b/c/d"])
def test_a_malformed_kaggle_source_is_refused_naming_the_form(source):
    with pytest.raises(DataError, match="kaggle:owner/name|must be a number"):
        parse_kaggle_source(source)


@pytest.mark.parametrize("version", [None, 3])
def test_every_kaggle_version_downloads_to_its_own_folder(tmp_path, kaggle_client, version):
    """kaggle:owner/name/VERSION asks the client for that version and finds the zip it writes (named after the
    dataset, not the version: the old code looked for 3.zip)."""
    source = "kaggle:gpiosenka/100-bird-species" + (f"/{version}" if version else "")
    root = get_data(source, tmp_path / "data")
    import kaggle.api.kaggle_api_extended as client

    assert client.CALLS == ["gpiosenka/100-bird-species" + (f"/{version}" if version else "")]
    assert root == tmp_path / "data" / ("100-bird-species" + (f"-v{version}" if version else "")) / "extracted"
    assert (root / "train" / "ABBOTTS BABBLER" / "1.jpg").is_file()
    from birdclf.data.download import data_origin

    origin = data_origin(root / "train")  # found from the data folder or below it
    assert origin["source"] == source and origin["version"] == (version or "the newest when downloaded")


def test_a_kaggle_client_that_exits_on_import_is_one_sentence(tmp_path, kaggle_client, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_EXIT_ON_IMPORT", "1")
    with pytest.raises(DataError, match="refused the credentials from environment"):
        download_kaggle(tmp_path / "k")


def _colab_secrets(monkeypatch, secrets: dict):
    import types

    class SecretNotFoundError(Exception):
        pass

    def get(name):
        if name not in secrets:
            raise SecretNotFoundError(name)
        return secrets[name]

    fake_colab(monkeypatch, userdata=types.SimpleNamespace(get=get))


def test_on_colab_the_credentials_come_from_its_secrets(tmp_path, kaggle_client, monkeypatch):
    from birdclf.data.download import kaggle_credentials

    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    monkeypatch.chdir(tmp_path)
    _colab_secrets(monkeypatch, {"KAGGLE_USERNAME": "colab-user", "KAGGLE_KEY": "abc"})
    assert kaggle_credentials() == "Colab Secrets"
    assert os.environ["KAGGLE_USERNAME"] == "colab-user" and os.environ["KAGGLE_KEY"] == "abc"
    assert get_data("kaggle", tmp_path / "data").is_dir()


def test_missing_colab_secrets_are_one_sentence_and_an_uploaded_kaggle_json_is_used(tmp_path, monkeypatch):
    from birdclf.data.download import kaggle_credentials

    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    monkeypatch.chdir(tmp_path)
    _colab_secrets(monkeypatch, {"KAGGLE_USERNAME": "colab-user"})
    with pytest.raises(DataError, match="Colab Secrets lack KAGGLE_USERNAME and KAGGLE_KEY"):
        kaggle_credentials()
    (tmp_path / "kaggle.json").write_text('{"username": "u", "key": "k"}')  # uploaded to /content
    assert kaggle_credentials() == str(tmp_path / "kaggle.json")
    assert os.environ["KAGGLE_CONFIG_DIR"] == str(tmp_path)


def test_unknown_source(tmp_path):
    with pytest.raises(DataError, match="not found"):
        get_data(str(tmp_path / "nothing-here"), tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("distance", [4, 7])
def test_near_duplicates_are_found_at_any_max_distance(monkeypatch, distance):
    """Hashes `distance` bits apart, the bits spread so no 16-bit block matches: found, and not at distance - 1."""
    import birdclf.data.check as check

    spread = sum(1 << (16 * k + k) for k in range(4)) | sum(1 << (60 + k) for k in range(distance - 4))
    hashes = {"a.jpg": 0, "b.jpg": spread}
    monkeypatch.setattr(check, "dhash", lambda path: hashes[Path(path).name])
    monkeypatch.setattr(check, "_file_digest", lambda path: str(path))
    items = [(Path(name), "train", "x") for name in hashes]
    assert [d["distance"] for d in check.find_duplicates(items, distance)] == [distance]
    assert check.find_duplicates(items, distance - 1) == []
