"""The prediction API in-process (FastAPI TestClient): every input form, every error status, JSON everywhere."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from birdclf.serving.predictor import Predictor
from birdclf.serving.service import create_app
from birdclf.settings import Settings
from tests.conftest import make_image


def small_settings(home, **changes) -> Settings:
    return Settings(home=home, threads=1, max_bytes=2_000_000, max_pixels=4_000_000, max_images=4,
                    url_timeout=5.0).with_(**changes)


@pytest.fixture(scope="module")
def client(birdclf_home):
    with TestClient(create_app(small_settings(birdclf_home, allow_private_urls=True))) as c:
        yield c


@pytest.fixture(scope="module")
def reference(starter_onnx):
    return Predictor(starter_onnx, threads=1)


def multipart(files: list[tuple[str, bytes]]) -> list:
    return [("file", (name, data, "image/jpeg")) for name, data in files]


def test_raw_body(client, reference):
    image = make_image(120, 90)
    r = client.post("/api/predict?top_k=3", content=image, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    (result,) = body["predictions"]
    expected = reference.predict(image, top_k=3)
    assert result["top_k"] == expected.top_k and result["verdict"] == expected.verdict
    assert body["top_k"] == 3 and body["model"]["name"].startswith("starter") and body["time_ms"] > 0
    assert isinstance(result["is_bird"], bool) and 0 <= result["bird_probability"] <= 1
    assert result["verdict"] in ("species", "unsure", "not_a_bird")


def test_multipart_several_files_and_top_k_field(client, reference):
    images = [make_image(seed=s) for s in range(3)]
    r = client.post("/api/predict", files=multipart([(f"bird{i}.png", im) for i, im in enumerate(images)]),
                    data={"top_k": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["filename"] for p in body["predictions"]] == ["bird0.png", "bird1.png", "bird2.png"]
    for image, result in zip(images, body["predictions"]):
        assert result["top_k"] == reference.predict(image, top_k=2).top_k


def test_health_labels_model(client, reference):
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["model"]["num_classes"] == 59
    r = client.get("/api/labels")
    assert r.status_code == 200 and r.json()["labels"] == list(reference.labels)
    r = client.get("/api/model")
    assert r.status_code == 200 and r.json()["model"]["model_name"] == reference.config.model_name
    assert client.head("/api/health").status_code == 200


@pytest.mark.parametrize("data,content_type,status,words", [
    (b"", "image/jpeg", 400, "empty"),
    (b"this is text", "image/jpeg", 400, "not a readable image"),
    (b"hello", "text/plain", 415, "unsupported Content-Type"),
    (b"a=b", "application/x-www-form-urlencoded", 415, "Content-Type: image/jpeg"),
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b'{"image": "x"}', "application/json", 400, "url"),
    (b'{"urls": []}', "application/json", 400, "non-empty"),
    (b'{"url": 5}', "application/json", 400, "non-empty string"),
    (b'{"url": "file:///etc/passwd"}', "application/json", 400, "only http and https"),
    (b'{"url": "http:///nohost"}', "application/json", 400, "no host"),
    (b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--x--\r\n", "multipart/form-data; boundary=x",
     400, "no non-empty file"),
    (b"garbage", "multipart/form-data", 400, "multipart"),
])
def test_bad_requests_get_json_errors(client, data, content_type, status, words):
    r = client.post("/api/predict", content=data, headers={"Content-Type": content_type})
    assert r.status_code == status and words in r.json()["error"] and r.json()["status"] == status


@pytest.mark.parametrize("body", [
    b'{"url": "http://example.org/a.jpg", "x": ' + b"1" * 5000 + b"}",  # int over Python's digit limit
    b'{"url": "http://[::1/a.jpg"}', b'{"url": "http://[zz]/a.jpg"}', b'{"url": "http://a]/x"}',
    b'{"url": "http://a..b/a.jpg"}', b'{"url": "http://' + b"a" * 64 + b'.com/x.jpg"}', b'{"url": "http://./"}',
    b'{"url": "http://\\udcff/"}', b'{"url": "http://example.org:99999/a.jpg"}', b'{"url": "x", "a": "\xff"}',
])
def test_odd_json_and_urls_are_400_in_our_own_words(client, body, caplog):
    """Each of these was a 500 with a traceback (bad ints, hosts Python cannot parse or encode) or echoed
    Python's codec text."""
    with caplog.at_level(logging.ERROR):
        r = client.post("/api/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["status"] == 400, r.text
    assert not any(word in r.json()["error"] for word in ("codec", "Port out of range", "Traceback", "idna"))
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged for a client error"


@pytest.mark.parametrize("query", ["top_k=%EF%BC%95", "top_k=%D9%A3", "top_k=1_0", "top_k=3.0", "top_k=0x3"])
def test_top_k_is_ascii_digits_only(client, query):
    r = client.post(f"/api/predict?{query}", content=make_image(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "top_k" in r.json()["error"]


def test_multipart_errors_are_in_our_own_words(client):
    fields = "".join(f'--x\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n' for i in range(20))
    r = client.post("/api/predict", content=(fields + "--x--\r\n").encode(),
                    headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "form fields" in r.json()["error"]
    big = b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + b"v" * 70_000 + b"\r\n--x--\r\n"
    r = client.post("/api/predict", content=big, headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "form field" in r.json()["error"] and "Part exceeded" not in r.json()["error"]
    nameless = b'--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n'
    r = client.post("/api/predict", content=nameless, headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "malformed multipart" in r.json()["error"]
    assert "Content-Disposition" not in r.json()["error"]


def test_trailing_slash_is_the_same_route_not_a_redirect(client):
    r = client.get("/api/health/", follow_redirects=False)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = client.post("/api/predict/", content=make_image(), headers={"Content-Type": "image/jpeg"},
                    follow_redirects=False)
    assert r.status_code == 200 and r.json()["predictions"]


def test_log_lines_escape_control_characters(client, caplog):
    with caplog.at_level(logging.INFO, logger="birdclf.serving.requests"):
        client.get("/x%0d%0a2026-12-01 INFO birdclf.serving.requests: FORGED")
    lines = [r.getMessage() for r in caplog.records if r.name == "birdclf.serving.requests"]
    assert lines and all("\r" not in line and "\n" not in line for line in lines)
    assert any("\\x0d\\x0a" in line for line in lines)


def test_truncated_jpeg_is_400_without_library_text(client):
    data = make_image(300, 300, quality=95)
    r = client.post("/api/predict", content=data[: len(data) // 3], headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "truncated" in r.json()["error"]
    assert "bytes not processed" not in r.json()["error"] and "Traceback" not in r.text


def test_decompression_bomb_is_413(client):
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, "PNG")  # 25 Mpx in a few KB; the app allows 4 Mpx
    r = client.post("/api/predict", content=buf.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "pixel" in r.json()["error"]


def test_too_many_bytes_is_413(client):
    data = make_image(64, 64, fmt="PNG") + b"\0" * 2_100_000
    r = client.post("/api/predict", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "byte" in r.json()["error"]
    r = client.post("/api/predict", files=multipart([("huge.png", data)]))
    assert r.status_code == 413 and "huge.png" in r.json()["error"]


def test_too_many_files_or_urls_is_413(client):
    r = client.post("/api/predict", files=multipart([(f"{i}.jpg", make_image(seed=i)) for i in range(5)]))
    assert r.status_code == 413 and "limit of 4" in r.json()["error"]
    r = client.post("/api/predict", json={"urls": [f"https://example.org/{i}.jpg" for i in range(5)]})
    assert r.status_code == 413 and "limit of 4" in r.json()["error"]


def test_bad_file_in_multipart_is_named(client):
    r = client.post("/api/predict", files=multipart([("good.jpg", make_image()), ("broken.jpg", b"nope")]))
    assert r.status_code == 400 and "broken.jpg" in r.json()["error"]


@pytest.mark.parametrize("query", ["top_k=0", "top_k=51", "top_k=abc", "top_k=2.5", "top_k=" + "9" * 5000])
def test_bad_top_k(client, query):
    r = client.post(f"/api/predict?{query}", content=make_image(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "top_k" in r.json()["error"]


def test_deeply_nested_or_huge_json_is_refused(client):
    r = client.post("/api/predict", content=b"[" * 200_000 + b"]" * 200_000,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "JSON body" in r.json()["error"]
    r = client.post("/api/predict", content=b"[" * 50_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]


def test_methods_routes_options(client):
    r = client.get("/api/predict")
    assert r.status_code == 405 and "POST" in r.json()["error"] and "POST" in r.headers["allow"]
    assert client.post("/api/health", content=b"x").status_code == 405
    r = client.get("/api/nowhere")
    assert r.status_code == 404 and "/api/predict" in r.json()["error"]
    assert client.get("/").status_code == 404 and client.get("/").json()["status"] == 404
    r = client.options("/api/predict")
    assert r.status_code == 204 and r.headers["allow"] == "POST, OPTIONS"


def test_openapi_and_docs(client):
    schema = client.get("/api/openapi.json").json()
    assert {"/api/predict", "/api/health", "/api/labels", "/api/model"} <= set(schema["paths"])
    body = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "multipart/form-data", "application/json"} <= set(body)
    assert "verdict" in json.dumps(schema["components"]["schemas"]["PredictionOut"])
    r = client.get("/api/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower() and "/api/openapi.json" in r.text


def test_cors(birdclf_home):
    with TestClient(create_app(small_settings(birdclf_home, cors_origins=("https://birds.example",)))) as c:
        preflight = {"Origin": "https://birds.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type, x-functions-key"}
        r = c.options("/api/predict", headers=preflight)
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "https://birds.example"
        assert "x-functions-key" in r.headers["access-control-allow-headers"]
        assert r.headers["access-control-max-age"] == "600" and "POST" in r.headers["access-control-allow-methods"]
        r = c.get("/api/health", headers={"Origin": "https://birds.example"})
        assert r.headers["access-control-allow-origin"] == "https://birds.example"
        r = c.post("/api/predict", content=b"x" * 3_000_000, headers={"Origin": "https://birds.example",
                                                                      "Content-Type": "image/jpeg"})
        assert r.status_code == 413 and r.headers["access-control-allow-origin"] == "https://birds.example"
        r = c.get("/api/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        r = c.options("/api/predict", headers={**preflight, "Origin": "https://evil.example"})
        assert r.status_code == 400 and "origin" in r.json()["error"] and "access-control-allow-origin" not in r.headers
        r = c.options("/api/predict", headers={"Origin": "https://birds.example"})  # no preflight: the route's own
        assert r.status_code == 204 and r.headers["allow"] == "POST, OPTIONS"


def test_misconfigured_app_starts_and_says_why(monkeypatch, birdclf_home):
    monkeypatch.setenv("BIRDCLF_HOME", str(birdclf_home))
    monkeypatch.setenv("BIRDCLF_MAX_BYTES", "twenty megabytes")
    with TestClient(create_app()) as c:
        r = c.get("/api/health")
        assert r.status_code == 503 and r.json()["status"] == "misconfigured"
        assert "BIRDCLF_MAX_BYTES" in r.json()["error"]
        r = c.post("/api/predict", content=make_image(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503 and "BIRDCLF_MAX_BYTES" in r.json()["error"]


def test_broken_model_is_503_without_paths(tmp_path, caplog):
    broken = tmp_path / "secret-folder" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not a model at all")
    with caplog.at_level(logging.INFO), TestClient(create_app(Settings(home=tmp_path, model=str(broken)))) as c:
        r = c.get("/api/health")
        assert r.status_code == 503 and r.json()["status"] == "error" and "could not be loaded" in r.json()["error"]
        r2 = c.post("/api/predict", content=make_image(), headers={"Content-Type": "image/jpeg"})
        assert r2.status_code == 503
        for text in (r.text, r2.text):
            assert "secret-folder" not in text and str(tmp_path) not in text and "onnxruntime" not in text
    assert "secret-folder" in caplog.text  # the details went to the log


def test_unexpected_error_is_json_500_and_logged(birdclf_home, caplog, monkeypatch):
    app = create_app(small_settings(birdclf_home))
    with TestClient(app, raise_server_exceptions=False) as c:
        predictor = app.state.service.predictor
        monkeypatch.setattr(predictor, "predict_views", lambda *a, **k: 1 / 0)
        with caplog.at_level(logging.INFO):
            r = c.post("/api/predict", content=make_image(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 500 and r.json() == {"error": "internal error; it has been logged", "status": 500}
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text
    assert any("POST /api/predict 500" in m for m in caplog.messages)


def test_one_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="birdclf"):
        client.post("/api/predict", files=multipart([("a.jpg", make_image()), ("b.jpg", make_image(seed=1))]))
    lines = [m for m in caplog.messages if m.startswith("POST /api/predict")]
    assert len(lines) == 1 and " 200 images=2 " in lines[0] and lines[0].endswith("ms")


class _ImageHost(BaseHTTPRequestHandler):
    image = make_image(80, 60, seed=42)

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client stopped reading at its size limit
            pass

    def do_GET(self):
        if self.path == "/redirect":
            self._send(302, Location="/bird.jpg")
        elif self.path == "/loop":
            self._send(302, Location="/loop")
        elif self.path.startswith("/bird.jpg"):
            self._send(200, self.image, Content_Type="image/jpeg")
        elif self.path.startswith("/delayed"):  # 1 s, then the image: concurrency shows in the total time
            time.sleep(1.0)
            self._send(200, self.image)
        elif self.path == "/drip":  # a byte every 0.2 s: never idle long enough for a per-read timeout
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif self.path == "/big":
            self._send(200, b"x" * 2_500_000)
        elif self.path == "/tiny":  # an endless body of 1-byte chunks: one parse each
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(2000):
                    self.wfile.write(b"1\r\nx\r\n" * 50)
                    time.sleep(0.005)
            except OSError:
                pass
        else:
            self._send(404)


@pytest.fixture(scope="module")
def image_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_json_urls(client, image_host, reference):
    expected = reference.predict(_ImageHost.image).top_k
    for path in ("/bird.jpg", "/redirect"):
        r = client.post("/api/predict", json={"url": image_host + path})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["top_k"] == expected
        assert r.json()["predictions"][0]["filename"] == image_host + path
    r = client.post("/api/predict", json={"url": image_host + "/bird.jpg", "top_k": 2})
    assert len(r.json()["predictions"][0]["top_k"]) == 2
    r = client.post("/api/predict", json={"url": image_host + "/missing"})
    assert r.status_code == 400 and "HTTP 404" in r.json()["error"]
    r = client.post("/api/predict", json={"url": image_host + "/loop"})
    assert r.status_code == 400 and "redirected more than" in r.json()["error"]
    r = client.post("/api/predict", json={"url": image_host + "/big"})
    assert r.status_code == 413


def test_several_urls_are_fetched_concurrently(client, image_host):
    urls = [f"{image_host}/delayed?{i}" for i in range(4)]
    started = time.monotonic()
    r = client.post("/api/predict", json={"urls": urls})
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and [p["filename"] for p in r.json()["predictions"]] == urls
    assert elapsed < 3.0, f"4 URLs of 1 s each took {elapsed:.1f} s: fetched one after another?"


def test_url_deadline_is_total_not_per_read(birdclf_home, image_host):
    app = create_app(small_settings(birdclf_home, allow_private_urls=True, url_timeout=1.0))
    with TestClient(app) as c:
        started = time.monotonic()
        r = c.post("/api/predict", json={"urls": [image_host + "/bird.jpg", image_host + "/drip"]})
        elapsed = time.monotonic() - started
    assert r.status_code == 400 and "longer than 1 s" in r.json()["error"] and "/drip" in r.json()["error"]
    assert elapsed < 2.5, f"a 1 s deadline held the request {elapsed:.1f} s"


def test_private_urls_refused_by_default(birdclf_home, image_host):
    with TestClient(create_app(small_settings(birdclf_home))) as c:
        for url in (image_host + "/bird.jpg", "http://169.254.169.254/latest/meta-data", "http://[::1]/x"):
            r = c.post("/api/predict", json={"url": url})
            assert r.status_code == 400 and "refused" in r.json()["error"], url
            assert "127.0.0.1" not in r.json()["error"] and "169.254" not in r.json()["error"]  # no address echoed
        r = c.post("/api/predict", json={"url": "http://no-such-host.invalid/x.jpg"})
        assert r.status_code == 400 and r.json()["error"] == c.post(
            "/api/predict", json={"url": "http://127.0.0.1/x.jpg"}).json()["error"]  # no oracle for internal names


def test_an_origin_sending_tiny_chunks_is_cut_off(client, image_host):
    started = time.monotonic()
    r = client.post("/api/predict", json={"url": image_host + "/tiny"})
    assert r.status_code == 400 and "pieces" in r.json()["error"], r.text
    assert time.monotonic() - started < 3


def test_a_bad_top_k_is_refused_before_any_url_is_fetched(client, image_host):
    started = time.monotonic()
    r = client.post("/api/predict", json={"urls": [image_host + "/delayed"] * 4, "top_k": "abc"})
    assert r.status_code == 400 and "top_k" in r.json()["error"]
    assert time.monotonic() - started < 0.8  # /delayed takes 1 s


def test_fetched_images_count_against_the_upload_budget(birdclf_home, image_host):
    app = create_app(small_settings(birdclf_home, allow_private_urls=True))
    with TestClient(app) as c:
        budget = app.state.service.body_budget
        budget.in_use = budget.capacity - 1000  # as if other requests held nearly all of it
        r = c.post("/api/predict", json={"url": image_host + "/bird.jpg"})
        assert r.status_code == 503 and "too many images" in r.json()["error"] and r.headers["Retry-After"]
        assert budget.in_use == budget.capacity - 1000  # what the refused request took is given back
        budget.in_use = 0
        assert c.post("/api/predict", json={"url": image_host + "/bird.jpg"}).status_code == 200
        assert budget.in_use == 0


def test_a_decode_past_the_deadline_keeps_its_place_until_it_ends(birdclf_home, monkeypatch):
    """The client gets its answer at the deadline, but the decode left running still holds its work place and its
    bytes: abandoned decodes cannot pile up beyond the limits."""
    app = create_app(small_settings(birdclf_home, request_timeout=1.0))
    with TestClient(app) as c:
        service = app.state.service
        c.get("/api/health")
        original = service.predictor.prepare
        monkeypatch.setattr(service.predictor, "prepare", lambda data: (time.sleep(2.5), original(data))[1])
        started = time.monotonic()
        r = c.post("/api/predict", content=make_image(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503 and time.monotonic() - started < 2.0
        places = service.admission
        assert places.free_places == places.capacity - 1 and service.body_budget.in_use > 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (places.free_places < places.capacity or service.body_budget.in_use):
            time.sleep(0.1)
        assert places.free_places == places.capacity and service.body_budget.in_use == 0


def test_model_calls_are_bounded_in_batch_and_in_number(birdclf_home, monkeypatch, reference):
    """Big requests run the model SERVE_BATCH images at a time, MODEL_CALLS calls at once, and each model run
    (the find stage's closer looks and tiles too) on at most SERVE_BATCH inputs (the ORT arena stays small);
    answers keep the files' order; every place and byte is given back afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    from birdclf.constants import MODEL_CALLS, SERVE_BATCH

    app = create_app(small_settings(birdclf_home, max_images=9))
    with TestClient(app) as c:
        service = app.state.service
        c.get("/api/health")
        original, forward = service.predictor.predict_views, service.predictor._forward
        seen = {"now": 0, "most": 0, "largest": 0, "rows": 0, "runs": 0}
        lock = threading.Lock()

        def counted(views, top_k):
            with lock:
                seen["now"] += 1
                seen["most"], seen["largest"] = max(seen["most"], seen["now"]), max(seen["largest"], len(views))
            try:
                time.sleep(0.2)  # long enough for the calls of concurrent requests to overlap if allowed to
                return original(views, top_k)
            finally:
                with lock:
                    seen["now"] -= 1

        def rows(batch):
            with lock:
                seen["rows"], seen["runs"] = max(seen["rows"], len(batch)), seen["runs"] + 1
            return forward(batch)

        monkeypatch.setattr(service.predictor, "predict_views", counted)
        monkeypatch.setattr(service.predictor, "_forward", rows)
        images = [make_image(seed=s) for s in range(9)]
        files = multipart([(f"b{i}.jpg", im) for i, im in enumerate(images)])
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: c.post("/api/predict?top_k=2", files=files), range(4)))
        assert [r.status_code for r in answers] == [200] * 4
        for r in answers:
            assert [p["filename"] for p in r.json()["predictions"]] == [f"b{i}.jpg" for i in range(9)]
            for image, result in zip(images, r.json()["predictions"]):
                assert result["top_k"] == reference.predict(image, top_k=2).top_k
        assert seen["largest"] == SERVE_BATCH and 1 < seen["most"] <= MODEL_CALLS
        assert seen["rows"] == SERVE_BATCH and seen["runs"] >= 4 * 3, seen
        assert service.admission.free_places == service.admission.capacity and service.body_budget.in_use == 0


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds almost none (Pillow reads only the header to open it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 20_000])  # over Pillow's own warning limit; over its error limit
def test_decompression_bomb_413_quotes_the_configured_limit(client, side):
    r = client.post("/api/predict", content=_png_header_only(side, side), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "4000000-pixel limit" in r.json()["error"], r.text
    assert "89478485" not in r.text and "178956970" not in r.text


@pytest.mark.parametrize("query", ["top_k=", "top_k=abc&top_k=", "top_k=&top_k=abc", "top_k=3&top_k=3", "top_k=+3"])
def test_top_k_in_the_query_empty_or_repeated_is_400(client, query):
    r = client.post(f"/api/predict?{query}", content=make_image(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "top_k" in r.json()["error"] and r.json()["status"] == 400, r.text


def test_top_k_in_a_form_is_checked_like_the_query(client):
    for value in ("", "abc", "0"):
        r = client.post("/api/predict", files=multipart([("a.jpg", make_image())]), data={"top_k": value})
        assert r.status_code == 400 and "top_k" in r.json()["error"], (value, r.text)
    r = client.post("/api/predict?top_k=1", files=multipart([("a.jpg", make_image())]), data={"top_k": "4"})
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top_k"]) == 1  # the query wins


def test_json_nulls_the_schema_allows_are_accepted(client, image_host):
    url = f"{image_host}/bird.jpg"
    for body in ({"url": url, "urls": None, "top_k": None}, {"url": None, "urls": [url]}, {"urls": [url], "top_k": 2}):
        r = client.post("/api/predict", json=body)
        assert r.status_code == 200, (body, r.text)
        assert r.json()["top_k"] == (body.get("top_k") or 5) and r.json()["predictions"][0]["filename"] == url
    r = client.post("/api/predict", json={"url": url, "urls": [url]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2  # both: nothing given is dropped


@pytest.mark.parametrize("body,words", [
    ({"url": None, "urls": None}, '{"url"'), ({"url": "https://example.org/a.jpg", "top_k": "3"}, "top_k"),
    ({"url": "https://example.org/a.jpg", "top_k": True}, "top_k"), ({"url": "https://example.org/a", "top_k": 2.0},
                                                                      "top_k"),
    ({"urls": "https://example.org/a.jpg"}, "urls"), ({"urls": [None]}, "non-empty string"),
])
def test_json_the_schema_forbids_is_400_in_our_words(client, body, words):
    r = client.post("/api/predict", json=body)
    assert r.status_code == 400 and words in r.json()["error"] and "Input should" not in r.json()["error"], r.text


def test_openapi_states_the_real_limits_and_errors(client):
    schema = client.get("/api/openapi.json").json()
    post = schema["paths"]["/api/predict"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"] and form["properties"]["file"]["maxItems"] == 4
    urls = post["requestBody"]["content"]["application/json"]["schema"]["properties"]["urls"]["anyOf"][0]
    assert urls["maxItems"] == 4 and urls["minItems"] == 1
    (top_k,) = post["parameters"]
    assert top_k["schema"]["minimum"] == 1 and top_k["schema"]["maximum"] == 50
    assert {"400", "408", "413", "415", "503"} <= set(post["responses"]) and "422" not in post["responses"]
    for status in ("400", "413", "503"):
        assert post["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert "4000000" in post["responses"]["413"]["description"] and "2000000" in json.dumps(post["requestBody"])
    assert "HTTPValidationError" not in json.dumps(schema)


def test_a_malformed_multipart_header_logs_one_quiet_line(client, caplog):
    body = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nBad Header: v\r\n\r\n'
            b'v\r\n--x--\r\n')
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            r = client.post("/api/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=x"})
            assert r.status_code == 400 and "malformed multipart" in r.json()["error"]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING], caplog.text
    mine = [rec for rec in caplog.records if rec.name != "birdclf.serving.requests" and "multipart" in rec.getMessage()]
    assert len(mine) <= 3 and all(rec.levelno <= logging.INFO for rec in mine), caplog.text


def test_the_decode_memory_given_to_the_app_is_the_one_it_keeps(birdclf_home):
    """The decode budget comes from the settings passed to create_app (it once came from the environment only)."""
    data = make_image(1200, 1000, fmt="PNG", seed=4)  # 4.8 MB of RGBA-sized pixels to decode
    with TestClient(create_app(small_settings(birdclf_home, decode_memory="1MiB"))) as tight:
        r = tight.post("/api/predict", content=data, headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "decode budget of 1 MiB" in r.json()["error"], r.json()
    with TestClient(create_app(small_settings(birdclf_home, decode_memory="64MiB"))) as roomy:
        r = roomy.post("/api/predict", content=data, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.json()
