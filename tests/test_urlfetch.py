"""The URL fetcher refuses to be an open proxy and enforces size and time limits."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from birdclf.errors import ImageTooLargeError, UrlFetchError
from birdclf.serving.urlfetch import check_address, fetch_urls


def fetch_url(url: str, max_bytes: int, timeout: float = 5.0, allow_private: bool = False) -> bytes:
    return asyncio.run(fetch_urls([url], max_bytes, timeout, allow_private))[0]


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254",
                                     "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1"])
def test_private_addresses_are_refused(address):
    with pytest.raises(UrlFetchError):
        check_address(address, allow_private=False)


def test_public_address_passes():
    check_address("93.184.216.34", allow_private=False)
    check_address("127.0.0.1", allow_private=True)


@pytest.mark.parametrize("url,words", [("ftp://example.com/x.jpg", "only http"), ("gopher://x", "only http"),
                                       ("http:///nohost", "no host"), ("http://localhost/x.jpg", "refused"),
                                       ("http://x:99999/", "port")])
def test_bad_urls(url, words):
    with pytest.raises(UrlFetchError, match=words):
        fetch_url(url, 1000, allow_private=False)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(3)
        body = b"x" * (5000 if self.path == "/big" else 10)
        self.send_response(200)
        if self.path != "/nolength":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body if self.path != "/nolength" else b"y" * 5000)
        except OSError:  # the client stopped reading at its limit
            pass


@pytest.fixture(scope="module")
def host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_limits(host):
    assert fetch_url(host + "/ok", 100, allow_private=True) == b"x" * 10
    with pytest.raises(ImageTooLargeError):
        fetch_url(host + "/big", 1000, allow_private=True)
    with pytest.raises(ImageTooLargeError):
        fetch_url(host + "/nolength", 1000, allow_private=True)
    with pytest.raises(UrlFetchError, match="longer than"):
        fetch_url(host + "/slow", 100, timeout=0.5, allow_private=True)
