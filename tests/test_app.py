"""The Voila web app in real Chromium, against the real prediction function."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from birdclf.webapp.page import ApiClient, AppError, render_result, species_link
from tests.conftest import ROOT, free_port, make_image, wait_http

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]


def test_result_card_escapes_and_links():
    card = render_result("<b>x</b>.jpg", {"top_k": [{"label": "AMERICAN GOLDFINCH", "probability": 0.9}],
                                          "is_bird": False, "bird_probability": 0.1})
    assert "&lt;b&gt;x&lt;/b&gt;.jpg" in card and "90.0%" in card and "may not be a bird" in card
    assert "American+Goldfinch" in species_link("AMERICAN GOLDFINCH")


def test_client_unreachable_is_friendly():
    client = ApiClient(url=f"http://127.0.0.1:{free_port()}/api", timeout=2)
    with pytest.raises(AppError, match="unreachable"):
        client.predict(make_image(), "a.jpg", "image/jpeg")


def test_client_reports_server_errors_in_plain_words(api_server):
    client = ApiClient(url=api_server)
    with pytest.raises(AppError, match="could not be read as a photo"):
        client.predict(b"not an image", "notes.txt", "text/plain")
    result = client.predict(make_image(), "a.jpg", "image/jpeg")
    assert len(result["top_k"]) == 5


@contextlib.contextmanager
def voila_app(api_url: str):
    """Real Voila serving app.ipynb against `api_url`; yields the page URL, stops Voila afterwards."""
    port = free_port()
    env = dict(os.environ, BIRDCLF_API_URL=api_url, BIRDCLF_API_TIMEOUT="20")
    proc = subprocess.Popen([sys.executable, "-m", "voila", "app.ipynb", "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/", 90)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(15)


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def bird_photo(tmp_path_factory) -> Path:
    """A real bird photo from ../shared/data when present, else a generated image."""
    shared = ROOT.parent / "shared" / "data" / "cub50" / "test" / "American_Goldfinch"
    photos = sorted(shared.glob("*.jpg")) if shared.is_dir() else []
    if photos:
        return photos[0]
    path = tmp_path_factory.mktemp("upload") / "generated.jpg"
    path.write_bytes(make_image(320, 240))
    return path


def _upload_and_classify(page, url: str, files: list[Path]) -> None:
    page.goto(url, wait_until="networkidle", timeout=90_000)
    page.wait_for_selector("button.widget-upload", timeout=90_000)
    assert page.locator("text=Which bird is this?").count() == 1
    assert page.locator("text=build_app").count() == 0  # no source shown
    with page.expect_file_chooser() as chooser:
        page.click("button.widget-upload")
    chooser.value.set_files([str(f) for f in files])
    page.wait_for_selector("text=photo(s) ready", timeout=30_000)
    page.click("button:has-text('Classify')")


@pytest.mark.slow
@pytest.mark.browser
def test_upload_and_classify_in_chromium(browser, api_server, bird_photo):
    with voila_app(api_server) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        _upload_and_classify(page, url, [bird_photo])
        page.wait_for_selector(".bc-result", timeout=60_000)
        rows = page.locator(".bc-result .bc-row")
        assert rows.count() == 5
        percentages = [float(t.rstrip("%")) for t in page.locator(".bc-result .bc-pct").all_inner_texts()]
        assert percentages == sorted(percentages, reverse=True) and 0 < sum(percentages) <= 100.5
        assert page.locator(".bc-result a[href*='wikipedia']").count() == 5
        if "shared" in str(bird_photo):
            assert "Goldfinch" in page.locator(".bc-result").inner_text()
        assert page.locator("text=Traceback").count() == 0
        _screenshot(page, "app_result.png")


@pytest.mark.slow
@pytest.mark.browser
def test_function_down_shows_friendly_error(browser, bird_photo):
    with voila_app(f"http://127.0.0.1:{free_port()}/api") as url:  # nothing listens there
        page = browser.new_page()
        _upload_and_classify(page, url, [bird_photo])
        page.wait_for_selector(".bc-result-error", timeout=60_000)
        text = page.locator(".bc-result-error").inner_text()
        assert "unreachable" in text and "Traceback" not in page.content()
        _screenshot(page, "app_function_down.png")


@pytest.mark.slow
def test_demo_starts_both_and_ctrl_c_stops_both(starter_onnx):
    import signal
    import time
    import urllib.request

    fn_port, app_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "birdclf", "demo", "--model", str(starter_onnx),
                             "--function-port", str(fn_port), "--app-port", str(app_port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Ctrl-C" in line for line in lines):
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        assert f"http://127.0.0.1:{fn_port}/api/predict" in text and f"http://127.0.0.1:{app_port}/" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{fn_port}/api/health", timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/", timeout=30) as resp:
            assert resp.status == 200
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0
        for port in (fn_port, app_port):
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
