"""The prediction function over real HTTP on loopback, and the Azure entry point itself."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from birdclf.inference import Predictor
from tests.conftest import make_image

pytestmark = pytest.mark.slow


def call(url: str, data: bytes | None = None, method: str | None = None, headers: dict | None = None):
    """(status, JSON body, headers) of one HTTP request."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else {}), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def multipart(files: list[tuple[str, bytes]], boundary: str = "birdclfboundary") -> tuple[bytes, str]:
    body = b""
    for name, data in files:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                 f"Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def reference(starter_onnx):
    return Predictor(starter_onnx, threads=1)


def test_raw_body(function_server, reference):
    image = make_image(120, 90)
    status, body, headers = call(f"{function_server}/predict?top_k=3", image, headers={"Content-Type": "image/jpeg"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    (result,) = body["predictions"]
    assert result["top_k"] == reference.predict(image, top_k=3).top_k
    assert body["top_k"] == 3 and body["model"]["name"].startswith("starter") and body["time_ms"] > 0
    assert isinstance(result["is_bird"], bool) and 0 <= result["bird_probability"] <= 1


def test_multipart_several_files(function_server, reference):
    images = [make_image(seed=s) for s in range(3)]
    data, content_type = multipart([(f"bird{i}.png", im) for i, im in enumerate(images)])
    status, body, _ = call(f"{function_server}/predict", data, headers={"Content-Type": content_type})
    assert status == 200
    assert [p["filename"] for p in body["predictions"]] == ["bird0.png", "bird1.png", "bird2.png"]
    for image, result in zip(images, body["predictions"]):
        assert result["top_k"] == reference.predict(image).top_k and len(result["top_k"]) == 5


def test_health_and_labels(function_server, reference):
    status, body, _ = call(f"{function_server}/health")
    assert status == 200 and body["status"] == "ok" and body["model"]["num_classes"] == 59
    status, body, _ = call(f"{function_server}/labels")
    assert status == 200 and body["labels"] == list(reference.labels)


@pytest.mark.parametrize("data,content_type,status,words", [
    (b"", "image/jpeg", 400, "empty"),
    (b"this is text", "image/jpeg", 400, "not a readable image"),
    (b"hello", "text/plain", 415, "unsupported Content-Type"),
    (b"a=b", "application/x-www-form-urlencoded", 415, "Content-Type: image/jpeg"),
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b'{"image": "x"}', "application/json", 400, "url"),
    (b'{"url": "file:///etc/passwd"}', "application/json", 400, "only http and https"),
    (b'{"url": "http://127.0.0.1:1/x.jpg"}', "application/json", 400, "private, loopback"),
    (b'{"url": "http://169.254.169.254/latest/meta-data"}', "application/json", 400, "link-local"),
    (b'{"url": "http://[::1]/x"}', "application/json", 400, "loopback"),
])
def test_bad_requests_get_json_errors(function_server, data, content_type, status, words):
    got, body, _ = call(f"{function_server}/predict", data, method="POST", headers={"Content-Type": content_type})
    assert got == status and words in body["error"] and body["status"] == status


def test_truncated_jpeg_is_400(function_server):
    data = make_image(300, 300, quality=95)
    status, body, _ = call(f"{function_server}/predict", data[: len(data) // 3], headers={"Content-Type": "image/jpeg"})
    assert status == 400 and "truncated" in body["error"]


def test_decompression_bomb_is_413(function_server):
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, "PNG")  # 25 Mpx in a few KB; the server allows 4 Mpx
    status, body, _ = call(f"{function_server}/predict", buf.getvalue(), headers={"Content-Type": "image/png"})
    assert status == 413 and "pixel" in body["error"]


def test_too_many_bytes_is_413(function_server):
    data = make_image(64, 64, fmt="PNG") + b"\0" * 2_100_000
    status, body, _ = call(f"{function_server}/predict", data, headers={"Content-Type": "image/png"})
    assert status == 413 and "byte" in body["error"]


def test_too_many_files_is_413(function_server):
    data, content_type = multipart([(f"{i}.jpg", make_image(seed=i)) for i in range(5)])
    status, body, _ = call(f"{function_server}/predict", data, headers={"Content-Type": content_type})
    assert status == 413 and "limit of 4" in body["error"]


def test_bad_file_in_multipart_is_named(function_server):
    data, content_type = multipart([("good.jpg", make_image()), ("broken.jpg", b"nope")])
    status, body, _ = call(f"{function_server}/predict", data, headers={"Content-Type": content_type})
    assert status == 400 and "broken.jpg" in body["error"]


@pytest.mark.parametrize("query", ["top_k=0", "top_k=51", "top_k=abc"])
def test_bad_top_k(function_server, query):
    status, body, _ = call(f"{function_server}/predict?{query}", make_image(), headers={"Content-Type": "image/jpeg"})
    assert status == 400 and "top_k" in body["error"]


def test_wrong_method_and_unknown_route(function_server):
    status, body, headers = call(f"{function_server}/predict")
    assert status == 405 and "POST" in body["error"] and "POST" in headers["Allow"]
    status, body, _ = call(f"{function_server}/health", b"x", method="POST")
    assert status == 405
    status, body, _ = call(f"{function_server}/nowhere")
    assert status == 404 and "/api/predict" in body["error"]


class _ImageHandler(BaseHTTPRequestHandler):
    image = make_image(80, 60, seed=42)

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/bird.jpg")
            self.end_headers()
            return
        if self.path == "/bird.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def image_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def function_app(birdclf_home):
    """function_app.py imported in this process, as the Azure worker imports it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BIRDCLF_HOME", str(birdclf_home))
    mp.delenv("BIRDCLF_MODEL", raising=False)
    from birdclf.localserver import load_function_app

    yield load_function_app()
    mp.undo()


@pytest.fixture(scope="module")
def local_server(function_app):
    """The same app served in-process (lets a test flip the loopback-URL setting)."""
    from birdclf.localserver import make_server

    server = make_server("127.0.0.1", 0, function_app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()


def test_json_url_to_a_loopback_server(local_server, image_host, reference, monkeypatch):
    monkeypatch.setenv("BIRDCLF_ALLOW_PRIVATE_URLS", "1")
    for path in ("/bird.jpg", "/redirect"):
        status, body, _ = call(f"{local_server}/predict", json.dumps({"url": image_host + path}).encode(),
                               headers={"Content-Type": "application/json"})
        assert status == 200, body
        assert body["predictions"][0]["top_k"] == reference.predict(_ImageHandler.image).top_k
    status, body, _ = call(f"{local_server}/predict", json.dumps({"url": image_host + "/missing"}).encode(),
                           headers={"Content-Type": "application/json"})
    assert status == 400 and "HTTP 404" in body["error"]
    monkeypatch.delenv("BIRDCLF_ALLOW_PRIVATE_URLS")
    status, body, _ = call(f"{local_server}/predict", json.dumps({"url": image_host + "/bird.jpg"}).encode(),
                           headers={"Content-Type": "application/json"})
    assert status == 400 and "refused" in body["error"]


def test_cors(local_server, function_app, monkeypatch):
    monkeypatch.setattr(function_app.service, "cors_origins", {"https://birds.example"})
    status, _, headers = call(f"{local_server}/predict", method="OPTIONS", headers={"Origin": "https://birds.example"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://birds.example"
    _, _, headers = call(f"{local_server}/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers


def test_azure_entry_point_routes_to_the_same_code(function_app, reference):
    import azure.functions as func

    from birdclf.localserver import routes_of

    routes = routes_of(function_app.app)
    assert set(routes) == {"predict", "labels", "health"}
    assert routes["predict"].auth_level == "function" and routes["health"].auth_level == "anonymous"
    predict = routes["predict"].function
    assert predict.__module__ == "function_app" and predict.__name__ == "predict"
    image = make_image(seed=9)
    req = func.HttpRequest("POST", "http://localhost/api/predict", headers={"Content-Type": "image/jpeg"},
                           params={"top_k": "2"}, body=image)
    resp = predict(req)
    body = json.loads(resp.get_body())
    assert resp.status_code == 200 and body["predictions"][0]["top_k"] == reference.predict(image, top_k=2).top_k
    resp = predict(func.HttpRequest("GET", "http://localhost/api/predict", body=b""))
    assert resp.status_code == 405


def test_concurrent_clients(function_server, reference):
    images = [make_image(96, 72, seed=s) for s in range(8)]
    expected = [reference.predict(im).top_k[0]["label"] for im in images]

    def client(index: int) -> list[tuple[int, str]]:
        out = []
        for _ in range(25):
            status, body, _ = call(f"{function_server}/predict", images[index], headers={"Content-Type": "image/jpeg"})
            out.append((status, body["predictions"][0]["top_k"][0]["label"] if status == 200 else body))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    for index, answers in enumerate(results):
        assert answers == [(200, expected[index])] * 25


def test_unloadable_model_is_503_with_a_reason(monkeypatch, tmp_path):
    from birdclf.api import ApiRequest, PredictionService, resolve_service_model

    monkeypatch.setenv("BIRDCLF_MODEL", "http://127.0.0.1:9/missing.onnx")  # nothing listens on port 9
    monkeypatch.setenv("BIRDCLF_HOME", str(tmp_path))
    service = PredictionService(model_resolver=resolve_service_model)
    health = service.handle("health", ApiRequest("GET"))
    assert health.status == 503 and "cannot load the model" in health.payload["error"]
    answer = service.handle("predict", ApiRequest("POST", {"Content-Type": "image/jpeg"}, {}, make_image()))
    assert answer.status == 503 and "model" in answer.payload["error"]
