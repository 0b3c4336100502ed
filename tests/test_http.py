"""The API over real HTTP (uvicorn on loopback, `birdclf serve`): normal traffic and each class of hostile input,
each with a status, a time bound and, where it matters, a memory bound."""

from __future__ import annotations

import io
import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from birdclf.serving.predictor import Predictor
from tests.conftest import api_process, make_image

pytestmark = pytest.mark.slow


def call(url: str, data: bytes | None = None, method: str | None = None, headers: dict | None = None):
    """(status, JSON body, headers) of one HTTP request."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else {}), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def multipart(files: list[tuple[str, bytes]], boundary: str = "birdclfboundary") -> tuple[bytes, str]:
    body = b""
    for name, data in files:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                 f"Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def raw_exchange(port: int, payload: bytes, read_timeout: float = 10.0) -> bytes:
    """Send raw bytes; return the first complete response (headers and Content-Length body), or what came before
    the server closed or the timeout passed."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(payload)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                head, sep, body = answer.partition(b"\r\n\r\n")
                length = [int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:")]
                if sep and length and len(body) >= length[0]:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def json_body(response: bytes) -> dict:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), head
    return json.loads(body)


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1].split("/", 1)[0])


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def threads_of(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads")


@pytest.fixture(scope="module")
def reference(starter_onnx):
    return Predictor(starter_onnx, threads=1)


@pytest.fixture(scope="module")
def hardened(birdclf_home):
    """A server with a 3 s request deadline and small limits, for the attacks."""
    env = {"BIRDCLF_MAX_BYTES": "2MB", "BIRDCLF_MAX_PIXELS": "4000000", "BIRDCLF_MAX_IMAGES": "4",
           "BIRDCLF_REQUEST_TIMEOUT": "3", "BIRDCLF_UPLOAD_BUDGET": "4MB"}  # budget: one largest body (9 MB)
    with api_process(birdclf_home, env) as server:
        yield server


def test_raw_multipart_health_over_http(api_server, reference):
    image = make_image(120, 90)
    status, body, headers = call(f"{api_server}/predict?top_k=3", image, headers={"Content-Type": "image/jpeg"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body["predictions"][0]["top_k"] == reference.predict(image, top_k=3).top_k
    assert "Server" not in headers  # no server or Python version banner
    images = [make_image(seed=s) for s in range(3)]
    data, content_type = multipart([(f"bird{i}.png", im) for i, im in enumerate(images)])
    status, body, _ = call(f"{api_server}/predict", data, headers={"Content-Type": content_type})
    assert status == 200 and [p["filename"] for p in body["predictions"]] == ["bird0.png", "bird1.png", "bird2.png"]
    status, body, _ = call(f"{api_server}/health")
    assert status == 200 and body["status"] == "ok" and body["model"]["num_classes"] == 59


def test_concurrent_clients(api_server, reference):
    images = [make_image(96, 72, seed=s) for s in range(16)]
    expected = [reference.predict(im).top_k[0]["label"] for im in images]

    def client(index: int) -> list[tuple[int, str]]:
        out = []
        for _ in range(12):
            status, body, _ = call(f"{api_server}/predict", images[index], headers={"Content-Type": "image/jpeg"})
            out.append((status, body["predictions"][0]["top_k"][0]["label"] if status == 200 else body))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client, range(16)))
    for index, answers in enumerate(results):
        assert answers == [(200, expected[index])] * 12


@pytest.mark.parametrize("chunk_line", [b"-1", b"9" * 1000, b"zz", b"40000000"])
def test_bad_or_huge_chunk_sizes(hardened, chunk_line):
    port = port_of(hardened.base)
    head = (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    started = time.monotonic()
    if chunk_line == b"40000000":  # a 1 GiB chunk, streamed until the server stops it
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + chunk_line + b"\r\n")
            sent = 0
            try:
                while sent < 200 * 2**20:
                    sock.sendall(b"\0" * 65536)
                    sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.settimeout(5)
            try:
                answer = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                answer = b""
        assert sent < 50 * 2**20, f"the server read {sent >> 20} MB before refusing"
        if answer:
            assert b" 413 " in answer.split(b"\r\n", 1)[0] and json_body(answer)["status"] == 413
    else:
        answer = raw_exchange(port, head + chunk_line + b"\r\nabc\r\n0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400") and json_body(answer)["status"] == 400
    assert time.monotonic() - started < 10
    assert call(f"{hardened.base}/health")[0] == 200  # still serving
    assert peak_rss_mb(hardened.proc.pid) < 600


def test_declared_huge_body_is_refused_before_reading(hardened):
    port = port_of(hardened.base)
    started = time.monotonic()
    answer = raw_exchange(port, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                                b"Content-Length: 10000000000\r\n\r\n", read_timeout=5)
    assert answer.startswith(b"HTTP/1.1 413") and "limit" in json_body(answer)["error"]
    assert time.monotonic() - started < 2


def test_slow_headers_are_cut_off(hardened):
    """A client dripping its request line a byte at a time is disconnected by the header deadline (10 s)."""
    port = port_of(hardened.base)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        closed_after = None
        for byte in b"POST /api/predict HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.5)
                if sock.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None and closed_after < 14, "the dripping connection was never closed"


def test_slow_body_gets_408(hardened):
    port = port_of(hardened.base)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        sock.settimeout(0.5)
        answer = b""
        for _ in range(40):  # a byte every 0.5 s, for up to 20 s
            try:
                sock.sendall(b"x")
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if b"\r\n\r\n" in answer:
                break
        sock.settimeout(2)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert answer.startswith(b"HTTP/1.1 408") and json_body(answer)["status"] == 408
    assert time.monotonic() - started < 6  # the 3 s request deadline


def _post_headers(port: int, length: int = 1000) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: %d\r\n\r\n" % length)
    return sock


def test_stalled_uploads_do_not_block_other_requests(hardened):
    """12 uploads that send their headers and then nothing (more than the 8 work places of a 2-core server):
    probes and other clients are still answered at once; the stalled ones get their 408."""
    port = port_of(hardened.base)
    socks = [_post_headers(port) for _ in range(12)]
    try:
        time.sleep(0.5)
        started = time.monotonic()
        assert call(f"{hardened.base}/health")[0] == 200
        status, body, _ = call(f"{hardened.base}/predict", make_image(), headers={"Content-Type": "image/jpeg"})
        assert status == 200 and body["predictions"], body
        assert time.monotonic() - started < 2.0
    finally:
        for sock in socks:
            sock.close()


def test_bodies_in_flight_share_one_budget(hardened):
    """Four uploads of 1.9 MB held open use the 9 MB upload budget: a fifth gets a JSON 503 with Retry-After at
    once instead of more memory; once they end, uploads are accepted again."""
    port = port_of(hardened.base)
    held = []
    try:
        for _ in range(4):
            sock = _post_headers(port, 2_000_000)
            sock.sendall(b"\0" * 1_900_000)
            held.append(sock)
        time.sleep(0.3)
        started = time.monotonic()
        sock = _post_headers(port, 2_000_000)
        sock.sendall(b"\0" * 1_900_000)
        sock.settimeout(5)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        sock.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"retry-after" in answer.lower() and "uploads at once" in json_body(answer)["error"]
        assert time.monotonic() - started < 2.0
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    status, _, _ = call(f"{hardened.base}/predict", make_image(), headers={"Content-Type": "image/jpeg"})
    assert status == 200


def test_tiny_chunks_are_refused(hardened):
    """A body of 1-byte chunks costs a parse each (one such client slowed every other request): after 1024 tiny
    pieces it gets a JSON 400 and the connection closes; the server stays responsive."""
    port = port_of(hardened.base)
    head = (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        sock.settimeout(0.05)
        for _ in range(100):  # 100 x 50 one-byte chunks, at most ~5 s
            try:
                sock.sendall(b"1\r\na\r\n" * 50)
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if b"}" in answer:
                break
    assert answer.startswith(b"HTTP/1.1 400") and "pieces" in json_body(answer)["error"], answer[:300]
    assert time.monotonic() - started < 10
    started = time.monotonic()
    assert call(f"{hardened.base}/health")[0] == 200 and time.monotonic() - started < 1.0


def test_idle_connection_flood_is_bounded(hardened):
    """520 idle connections: past the 512 cap new ones get a JSON 503 at once; no thread per connection; the
    idle ones are closed by the header deadline and service resumes."""
    port = port_of(hardened.base)
    threads_before = threads_of(hardened.proc.pid)
    socks = []
    try:
        for _ in range(520):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        answer = raw_exchange(port, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n", read_timeout=5)
        assert answer.startswith(b"HTTP/1.1 503") and "too many open connections" in json_body(answer)["error"]
        assert threads_of(hardened.proc.pid) <= threads_before + 4
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and call(f"{hardened.base}/health")[0] != 200:
            time.sleep(0.5)
        assert call(f"{hardened.base}/health")[0] == 200
    finally:
        for s in socks:
            s.close()


def test_many_empty_multipart_parts_are_cheap(hardened):
    """~10 MB of empty file parts: refused quickly (the old parser spent ~29 s of CPU on it)."""
    part = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n\r\n\r\n"
    body = part * (2_000_000 // len(part)) + b"--b--\r\n"
    started = time.monotonic()
    status, answer, _ = call(f"{hardened.base}/predict", body,
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert status in (400, 413) and answer["status"] == status
    assert time.monotonic() - started < 3
    fields = b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n\r\n" * 100_000 + b"--b--\r\n"
    started = time.monotonic()
    status, answer, _ = call(f"{hardened.base}/predict", fields,
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert status == 413 and "form fields" in answer["error"] and time.monotonic() - started < 3


def test_content_length_with_chunked_is_refused(hardened):
    """Both framings in one request: a proxy in front could read it the other way (request smuggling)."""
    answer = raw_exchange(port_of(hardened.base), b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg"
                                                  b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                  b"0\r\n\r\n", read_timeout=5)
    assert answer.startswith(b"HTTP/1.1 400") and "Transfer-Encoding" in json_body(answer)["error"]


def test_malformed_request_line_gets_json(hardened):
    answer = raw_exchange(port_of(hardened.base), b"NOT HTTP AT ALL\r\n\r\n", read_timeout=5)
    assert answer.startswith(b"HTTP/1.1 400") and json_body(answer) == {"error": "malformed HTTP request",
                                                                        "status": 400}


def test_every_request_is_logged(hardened):
    call(f"{hardened.base}/labels")
    call(f"{hardened.base}/predict", b"junk", headers={"Content-Type": "image/png"})
    time.sleep(0.3)
    log = hardened.log_text()
    assert "GET /api/labels 200" in log and "POST /api/predict 400" in log
    assert "serving starter-imagenet-birds-lite0 version " in log and "ready in" in log


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def test_memory_is_bounded_for_huge_and_odd_images(birdclf_home):
    """Sent four at a time: 49 Mpx RGBA PNGs (196 MB decoded each; the old server reached 3.8 GB for four),
    progressive 49 Mpx JPEGs (libjpeg keeps every coefficient: 150 MB each whatever the draft size), and strips of
    a few KB with extreme aspect ratios (a 65500x1 JPEG once resized to 256 x 16.8M pixels: 17 GB). Peak memory
    stays bounded, every answer comes in time, and images the decode budget cannot hold get a 413 at once."""
    arr = np.zeros((7000, 7000, 4), np.uint8)
    arr[::50, :, :] = 200
    arr[..., 3] = 255
    png = _encoded(Image.fromarray(arr), "PNG", compress_level=1)
    del arr
    texture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    big = texture.resize((7000, 7000))
    progressive = _encoded(big, "JPEG", progressive=True, quality=60)
    over_budget = {"CMYK progressive JPEG": _encoded(big.convert("CMYK"), "JPEG", progressive=True, quality=60),
                   "WebP": _encoded(big, "WEBP", quality=40)}
    del big
    strips = [_encoded(Image.new("L", (65500, 1), 90), "JPEG"), _encoded(Image.new("L", (1, 7000), 90), "JPEG"),
              _encoded(Image.new("L", (20, 50000), 90), "PNG"), _encoded(Image.new("RGB", (10, 100000)), "PNG")]
    batches = {"png": [(png, "image/png")] * 4, "progressive": [(progressive, "image/jpeg")] * 4,
               "strips": [(data, "image/png") for data in strips]}
    with api_process(birdclf_home, {"BIRDCLF_THREADS": "2"}) as server:
        before = peak_rss_mb(server.proc.pid)
        for name, batch in batches.items():
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda item: call(f"{server.base}/predict", item[0],
                                                          headers={"Content-Type": item[1]}), batch))
            elapsed = time.monotonic() - started
            assert all(status == 200 for status, _, _ in answers), (name, [a[1] for a in answers])
            assert elapsed < 25, f"{name}: {elapsed:.1f} s"
        for name, data in over_budget.items():
            started = time.monotonic()
            status, body, _ = call(f"{server.base}/predict", data, headers={"Content-Type": "image/jpeg"})
            assert status == 413 and "decode budget" in body["error"], (name, body)
            assert time.monotonic() - started < 2
        peak = peak_rss_mb(server.proc.pid)
    assert peak - before < 450, f"peak {peak:.0f} MB, {peak - before:.0f} MB over the idle server"
