"""The web app: photo preparation and the API client in-process, then the real page (Voila) in real Chromium at
phone and desktop sizes, against the real API serving a real (tiny) ONNX model."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.common import child_pids, pss_mb
from birdclf.webapp.client import ApiClient, AppError
from birdclf.webapp.page import UPLOAD_LIMIT_MB, render_error, render_result, species_link
from birdclf.webapp.photos import SEND_PIXELS, PhotoError, prepare_photo
from tests.conftest import ROOT, api_process, free_port, make_image, wait_http

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]
PHONE = {"width": 390, "height": 844}


# -- the page's pieces, in-process ------------------------------------------------------------------------------
def test_cards_put_the_answer_first():
    species = render_result("<b>x</b>.jpg", {"top_k": [{"label": "AMERICAN GOLDFINCH", "probability": 0.93},
                                                       {"label": "HOUSE FINCH", "probability": 0.001}],
                                             "is_bird": True, "bird_probability": 0.99, "verdict": "species"})
    assert "&lt;b&gt;x&lt;/b&gt;.jpg" in species and ">American Goldfinch</a>, 93%" in species
    assert 'target="_blank" rel="noopener noreferrer"' in species and "American+Goldfinch" in species_link(
        "AMERICAN GOLDFINCH")
    assert species.index("Other possibilities") > species.index("93%")  # the rest folded below the answer
    assert "only when it is this sure" in species  # what the verdict means, in words
    assert 'width:0.1%' not in species  # no sliver of a bar for a 0.1% guess
    unsure = render_result("a.jpg", {"top_k": [{"label": "Bulbul", "probability": 0.3}], "verdict": "unsure",
                                     "is_bird": True, "bird_probability": 0.9})
    assert "Not sure" in unsure and "could be one of these" in unsure
    not_bird = render_result("cup.jpg", {"top_k": [{"label": "Kite", "probability": 0.4}], "verdict": "not_a_bird",
                                         "is_bird": False, "bird_probability": 0.02})
    assert "No bird found" in not_bird and "Best guesses anyway" in not_bird
    assert "&lt;script&gt;" in render_error("<script>x</script>")


def _jpeg(width: int, height: int, **save) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **save)
    return buf.getvalue()


def test_big_photos_are_made_small_and_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees
    photo = prepare_photo("big.jpg", _jpeg(6000, 4000, quality=95, exif=exif.tobytes()))
    sent = Image.open(io.BytesIO(photo.jpeg))
    assert sent.width * sent.height <= SEND_PIXELS and sent.height > sent.width  # EXIF applied before sending
    assert photo.original_size == (6000, 4000) and photo.thumbnail_uri.startswith("data:image/jpeg;base64,")
    rgba = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert np.asarray(Image.open(io.BytesIO(prepare_photo("clear.png", buf.getvalue()).jpeg))).min() > 240


@pytest.mark.parametrize("data,words", [
    (b"", "empty"), (b"hello, not a photo", "not a photo this page can read"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIC"), (make_image()[:200], "damaged or incomplete")])
def test_unreadable_uploads_are_named_and_explained(data, words):
    with pytest.raises(PhotoError, match=words) as info:
        prepare_photo("IMG_0042.jpg", data)
    assert "IMG_0042.jpg" in str(info.value)


class _FakeApi(http.server.BaseHTTPRequestHandler):
    """A stand-in for the API's transport behaviour (status codes, delays); real answers come from tests below."""

    delay = 0.0
    status = 200

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay)
        body = (b'{"predictions": [{"top_k": [{"label": "Kite", "probability": 0.9}], "verdict": "species"}]}'
                if self.status == 200 else b'{"error": "request body is empty", "status": %d}' % self.status)
        try:
            self.send_response(self.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up at its deadline
            pass


@contextlib.contextmanager
def fake_api(status: int = 200, delay: float = 0.0):
    handler = type("Handler", (_FakeApi,), {"status": status, "delay": delay})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()


def test_photos_go_out_side_by_side_under_one_deadline():
    photos = [(f"p{i}.jpg", b"x") for i in range(4)]
    with fake_api(delay=1.0) as url:
        started = time.monotonic()
        answers = ApiClient(url=url, timeout=10).predict_many(photos)
        assert time.monotonic() - started < 2.5 and all(isinstance(a, dict) for a in answers)  # not 4 s in turn
        started = time.monotonic()
        answers = ApiClient(url=url, timeout=0.5).predict_many(photos)
        assert time.monotonic() - started < 1.5  # one 0.5 s deadline for all, not 0.5 s each
        assert all(isinstance(a, AppError) and f"p{i}.jpg" in str(a) for i, a in enumerate(answers))


@pytest.mark.parametrize("status,words", [(413, "too large"), (400, "JPEG, PNG, WebP, GIF, BMP or TIFF"),
                                          (401, "access key"), (503, "busy"), (500, "HTTP 500")])
def test_api_errors_become_words(status, words):
    with fake_api(status) as url, pytest.raises(AppError, match=words) as info:
        ApiClient(url=url).predict(b"x", "bird.jpg")
    assert "request body" not in str(info.value)  # the API's wording stays out of the page
    if status != 401:
        assert "bird.jpg" in str(info.value)


def test_unreachable_service_is_friendly():
    with pytest.raises(AppError, match="unreachable") as info:
        ApiClient(url=f"http://127.0.0.1:{free_port()}/api", timeout=2).predict(b"x", "a.jpg")
    assert "a.jpg" in str(info.value)


# -- the real page in Chromium ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def verdict_model(tmp_path_factory) -> Path:
    """A real (tiny) ONNX model, exported with birdclf's exporter, whose verdict follows the photo's colour: red ->
    'species', grey -> 'unsure', blue -> 'not_a_bird'."""
    torch = pytest.importorskip("torch")
    from birdclf.config import ModelConfig
    from birdclf.training.export import export_onnx

    class ColourModel(torch.nn.Module):
        def forward(self, x):
            r, g, b = x.mean((2, 3)).unbind(1)
            logits = torch.stack([8 * r, 8 * g, -8 * (r + g)], 1)
            return logits, torch.sigmoid(6 * (r + g - b) + 3)

    config = ModelConfig(model_name="colour-birds", labels=("RED CARDINAL", "GREEN JAY", "GREY HERON"),
                         input_size=64, resize_size=72, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), version="1",
                         bird_threshold=0.5, species_threshold=0.6, card={"coverage": {
                             "summary": "This test model knows 3 colours of bird.", "groups": []}})
    path = tmp_path_factory.mktemp("colour") / "colour.onnx"
    export_onnx(ColourModel(), path, config)
    return path


@pytest.fixture(scope="module")
def colour_photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    photos = {}
    for name, colour in (("red", (230, 20, 20)), ("grey", (128, 128, 128)), ("blue", (20, 20, 230))):
        photos[name] = folder / f"{name}-bird.jpg"
        Image.new("RGB", (640, 480), colour).save(photos[name])
    (folder / "notes.jpg").write_text("a text file renamed .jpg")
    photos["text"] = folder / "notes.jpg"
    arr = np.random.default_rng(1).integers(0, 256, (4000, 6000, 3), dtype=np.uint8)
    arr[..., 0] = 160 + arr[..., 0] % 96  # red noise: a 24 Mpx JPEG of about 30 MB, as big as phone photos get
    arr[..., 1:] //= 4
    Image.fromarray(arr).save(folder / "phone-30mb.jpg", quality=98, subsampling=0)
    photos["big"] = folder / "phone-30mb.jpg"
    assert photos["big"].stat().st_size > 25e6
    (folder / "too-big.jpg").write_bytes(b"\xff\xd8" + os.urandom((UPLOAD_LIMIT_MB + 5) * 2**20))
    photos["too_big"] = folder / "too-big.jpg"
    return photos


@pytest.fixture(scope="module")
def api(verdict_model, tmp_path_factory):
    with api_process(tmp_path_factory.mktemp("home"), args=("--model", str(verdict_model))) as server:
        yield server


@contextlib.contextmanager
def voila_app(api_url: str, *extra: str):
    """Real Voila serving app.ipynb (with the repo's voila.json) against `api_url`; yields (page URL, process)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIRDCLF_", "GLIBC_TUNABLES"))}
    env.update(BIRDCLF_API_URL=api_url, BIRDCLF_API_TIMEOUT="20", MALLOC_MMAP_THRESHOLD_="131072")  # as the Procfile
    proc = subprocess.Popen([sys.executable, "-m", "voila", "app.ipynb", "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/voila/static/ready-probe", 90, process=proc)  # "/" would start a kernel
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _open(browser, url: str, viewport: dict):
    """A new visitor: its own browser context (cookies), as separate people have."""
    page = browser.new_context(viewport=viewport).new_page()
    page.goto(url, wait_until="networkidle", timeout=90_000)
    page.wait_for_selector("button.widget-upload", timeout=90_000)
    return page


def _choose(page, files: list[Path]) -> None:
    with page.expect_file_chooser() as chooser:
        page.click("button.widget-upload")
    chooser.value.set_files([str(f) for f in files])


def _sent_bytes(page) -> list[int]:
    """Sizes of the websocket frames the page sends to its kernel (an upload travels in these)."""
    sizes: list[int] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sizes.append(len(payload))))
    return sizes


def _status(page, timeout: float = 90_000) -> str:
    """The status line once identifying has finished."""
    page.wait_for_selector(".bc-status :text-matches('identified|went wrong')", timeout=timeout)
    return page.locator(".bc-status").inner_text()


def _predict_count(server) -> int:
    time.sleep(0.3)
    return len(re.findall(r"POST /api/predict 200", server.log_text()))


@pytest.mark.slow
@pytest.mark.browser
def test_phone_three_verdicts_big_photo_and_a_non_image(browser, api, colour_photos):
    with voila_app(api.base) as (url, _):
        page = browser.new_context(viewport={"width": 390, "height": 2600}).new_page()  # tall: one screenshot
        sent = _sent_bytes(page)
        page.goto(url, wait_until="networkidle", timeout=90_000)
        page.wait_for_selector("button.widget-upload", timeout=90_000)
        assert page.locator("text=This identifier knows 3 kinds of bird").count() == 1  # the coverage, in words
        assert page.locator("text=build_app").count() == 0  # no source shown
        for button in ("button.widget-upload", "button:has-text('Identify')"):  # thumb-sized
            assert page.locator(button).bounding_box()["height"] >= 44
        before = sum(sent)
        _choose(page, [colour_photos[k] for k in ("red", "grey", "blue", "big", "text")])
        page.wait_for_selector("text=ready", timeout=60_000)
        uploaded = sum(sent) - before
        assert uploaded < 8e6, f"{uploaded / 1e6:.1f} MB sent for a 30 MB photo and three small ones"  # shrunk
        assert "notes.jpg" in page.locator(".bc-error").inner_text()  # named before anything is sent
        assert "could not be read" in page.locator(".bc-status").inner_text()
        page.click("button:has-text('Identify')")
        status = _status(page)
        assert "4 photos identified" in status and "1 file could not be read" in status
        cards = page.locator(".bc-result")
        assert cards.count() == 4
        text = {name: page.locator(".bc-result", has_text=f"{name}").inner_text()
                for name in ("red-bird", "grey-bird", "blue-bird", "phone-30mb")}
        assert "Red Cardinal" in text["red-bird"] and "confident" in text["red-bird"]
        assert "Not sure" in text["grey-bird"] and "No bird found" in text["blue-bird"]
        assert "Red Cardinal" in text["phone-30mb"]  # the 30 MB photo, downscaled in the kernel, was answered
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide on a 390 px screen"
        for box in page.locator(".bc-pct, .bc-headline, .bc-photo img").all():
            b = box.bounding_box()
            if b:  # folded rows have no box
                assert b["x"] >= 0 and b["x"] + b["width"] <= 390, b
        card = page.locator(".bc-result", has_text="red-bird")
        assert card.locator(".bc-headline").bounding_box()["y"] < card.locator(".bc-photo img").bounding_box()["y"]
        links = page.locator(".bc-result a[href*='wikipedia']")
        assert links.count() >= 3 and links.first.get_attribute("target") == "_blank"
        for link in page.locator(".bc-row a").all():
            box = link.bounding_box()
            assert box is None or box["height"] >= 30, box  # folded rows have no box
        assert page.locator("text=Traceback").count() == 0
        _screenshot(page, "app_phone.png")
        page = _open(browser, url, {"width": 1200, "height": 1600})
        _choose(page, [colour_photos["red"], colour_photos["grey"], colour_photos["blue"]])
        page.wait_for_selector("text=ready", timeout=60_000)
        page.click("button:has-text('Identify')")
        _status(page)
        _screenshot(page, "app_desktop.png")


@pytest.mark.slow
@pytest.mark.browser
def test_double_click_runs_once_and_over_the_limit_says_so(browser, api, colour_photos):
    with voila_app(api.base) as (url, _):
        page = _open(browser, url, PHONE)
        before = _predict_count(api)
        _choose(page, [colour_photos["red"], colour_photos["grey"]])
        page.wait_for_selector("text=ready", timeout=60_000)
        page.dblclick("button:has-text('Identify')")
        _status(page)
        time.sleep(2)  # a queued second click would have run by now
        assert _predict_count(api) - before == 2
        _choose(page, [colour_photos["too_big"]])
        page.wait_for_selector(f"text=the limit is {UPLOAD_LIMIT_MB} MB", timeout=20_000)
        assert "too-big.jpg" in page.locator(".bc-status").inner_text()


@pytest.mark.slow
@pytest.mark.browser
def test_service_down_names_the_photo(browser, colour_photos):
    with voila_app(f"http://127.0.0.1:{free_port()}/api") as (url, _):  # nothing listens there
        page = _open(browser, url, PHONE)
        _choose(page, [colour_photos["red"]])
        page.wait_for_selector("text=ready", timeout=60_000)
        page.click("button:has-text('Identify')")
        status = _status(page)
        text = page.locator(".bc-error").inner_text()
        assert "red-bird.jpg" in text and "unreachable" in text and "try again" in text
        assert "failed" in status and "Done" not in status and "Traceback" not in page.content()
        _screenshot(page, "app_service_down.png")


@pytest.mark.slow
@pytest.mark.browser
def test_the_browser_sends_phone_photos_small_and_upright(browser, api, tmp_path):
    """A 12 Mpx camera JPEG stored sideways (EXIF orientation 6), 5 MB: what travels to the kernel is about 2 Mpx,
    upright, and the answer comes back."""
    arr = np.random.default_rng(2).integers(0, 64, (3000, 4000, 3), dtype=np.uint8)
    arr[..., 0] += 180  # red: a "Red Cardinal" for the colour model
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "IMG_0001.jpg"
    Image.fromarray(arr).save(photo, quality=92, exif=exif.tobytes())
    assert photo.stat().st_size > 4e6
    with voila_app(api.base) as (url, _):
        page = browser.new_context(viewport=PHONE).new_page()
        sent = _sent_bytes(page)
        page.goto(url, wait_until="networkidle", timeout=90_000)
        page.wait_for_selector("button.widget-upload", timeout=90_000)
        before = sum(sent)
        _choose(page, [photo])
        page.wait_for_selector("text=ready", timeout=60_000)
        assert sum(sent) - before < 2e6, f"{(sum(sent) - before) / 1e6:.1f} MB sent for a 12 Mpx photo"
        size = page.evaluate("(() => { const i = document.querySelector('.bc-photo img'); "
                             "return [i.naturalWidth, i.naturalHeight]; })()")
        assert size[1] > size[0], f"the thumbnail is {size}: the sideways photo was not turned upright"
        page.click("button:has-text('Identify')")
        assert "1 photo identified" in _status(page) and "Red Cardinal" in page.locator(".bc-result").inner_text()


@pytest.mark.slow
@pytest.mark.browser
def test_try_again_once_the_service_is_back(browser, verdict_model, colour_photos, tmp_path):
    """The service is down: the card says so and Identify becomes 'Try again'; the service comes back: the same
    photos are identified without choosing them again."""
    port = free_port()
    with voila_app(f"http://127.0.0.1:{port}/api") as (url, _):
        page = _open(browser, url, PHONE)
        _choose(page, [colour_photos["red"], colour_photos["blue"]])
        page.wait_for_selector("text=ready", timeout=60_000)
        page.click("button:has-text('Identify')")
        assert "failed" in _status(page) and "Try again" in page.locator(".bc-status").inner_text()
        retry = page.locator("button:has-text('Try again')")
        assert retry.count() == 1 and retry.is_enabled()
        with api_process(tmp_path, args=("--model", str(verdict_model)), port=port):
            retry.click()
            page.wait_for_selector(".bc-status :text('Done: 2 photos identified.')", timeout=60_000)
        assert page.locator(".bc-result").count() == 2 and page.locator(".bc-result-error").count() == 0
        assert page.locator("button:has-text('Identify')").is_disabled()


@pytest.mark.slow
@pytest.mark.browser
def test_a_page_whose_kernel_was_culled_says_so(browser, api, colour_photos):
    """Voila culls a kernel idle too long; the page then still looks alive but nothing would happen. It notices
    (when it comes back into view, or within a minute) and offers a reload instead of silently doing nothing."""
    with voila_app(api.base, "--CappedKernelManager.cull_idle_timeout=4",
                   "--CappedKernelManager.cull_interval=1") as (url, proc):
        page = _open(browser, url, PHONE)
        assert page.locator(".bc-asleep").count() == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and child_pids(proc.pid):
            time.sleep(0.5)
        assert child_pids(proc.pid) == [], "the idle kernel was not culled"
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # the visitor comes back
        page.wait_for_selector(".bc-asleep", timeout=10_000)
        assert "went to sleep" in page.locator(".bc-asleep").inner_text()
        assert page.locator(".bc-asleep button:has-text('Reload')").bounding_box()["height"] >= 44
        _choose(page, [colour_photos["red"]])
        page.wait_for_timeout(1000)
        assert "reload" in page.locator(".bc-status").inner_text().lower()  # not a silent "Sending..."
        _screenshot(page, "app_asleep.png")
        page.click(".bc-asleep button")
        page.wait_for_selector("button.widget-upload", timeout=90_000)
        assert page.locator(".bc-asleep").count() == 0


@pytest.mark.slow
@pytest.mark.browser
def test_visitor_capacity(browser, api, colour_photos):
    """Three places: three visitors get the page and kernels; the fourth gets the busy page (503); closing the
    pages frees the kernels at once; memory per visitor is measured."""
    with voila_app(api.base, "--CappedKernelManager.max_kernels=3") as (url, proc):
        idle = pss_mb(proc.pid)
        pages = []
        for _ in range(3):
            page = _open(browser, url, PHONE)
            _choose(page, [colour_photos["red"]])
            page.wait_for_selector("text=ready", timeout=60_000)
            page.click("button:has-text('Identify')")
            _status(page)
            pages.append(page)
        kernels = child_pids(proc.pid)
        assert len(kernels) == 3
        total = pss_mb(proc.pid) + sum(pss_mb(k) for k in kernels)
        extra = browser.new_page(viewport=PHONE)
        response = extra.goto(url, timeout=60_000)
        assert response.status == 503 and "busy right now" in extra.content()
        _screenshot(extra, "app_busy.png")
        for page in pages:
            page.close(run_before_unload=True)  # the tab closes: Voila's page asks for its kernel's shutdown
            page.context.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and child_pids(proc.pid):
            time.sleep(0.5)
        assert child_pids(proc.pid) == [], "closed pages left their kernels behind"
        per_visitor = (total - idle) / 3
        print(f"voila idle {idle:.0f} MB PSS; 3 visitors {total:.0f} MB; {per_visitor:.0f} MB per visitor")
        assert per_visitor < 60, f"{per_visitor:.0f} MB per visitor"


@pytest.mark.slow
def test_demo_starts_both_and_ctrl_c_stops_both(starter_onnx):
    import signal
    import time

    fn_port, app_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "birdclf", "demo", "--model", str(starter_onnx),
                             "--function-port", str(fn_port), "--app-port", str(app_port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as in `cmd &`
    try:
        lines = []
        deadline = time.monotonic() + 300  # under CI's full run, Voila's first start on 2 busy cores is slow
        while time.monotonic() < deadline and not any("Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
        text = "".join(lines)
        assert f"http://127.0.0.1:{fn_port}/api/predict" in text and f"http://127.0.0.1:{app_port}/" in text, text
        with urllib.request.urlopen(f"http://127.0.0.1:{fn_port}/api/health", timeout=30) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/", timeout=30) as resp:
            assert resp.status == 200
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
        tail = proc.stdout.read()[-3000:]
        assert code == 0, f"demo exited with {code}: {tail}"
        for port in (fn_port, app_port):
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_heroku_files_are_the_packaged_page():
    """app.ipynb and voila.json at the repo root (what Heroku serves) are the copies `birdclf demo` uses."""
    from birdclf.webapp import NOTEBOOK

    assert (ROOT / "app.ipynb").read_bytes() == NOTEBOOK.read_bytes()
    assert (ROOT / "voila.json").read_bytes() == (NOTEBOOK.parent / "voila.json").read_bytes()
    assert "MALLOC_MMAP_THRESHOLD_" in (ROOT / "Procfile").read_text()
    assert (ROOT / "requirements.txt").read_text().strip() == ".[app]"
