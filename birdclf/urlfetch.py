"""Fetch an image from a user-given URL without becoming an open proxy: http(s) only, public addresses only."""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from .constants import DEFAULT_URL_TIMEOUT, ENV_ALLOW_PRIVATE_URLS, ENV_URL_TIMEOUT
from .errors import ImageTooLargeError, UrlFetchError

__all__ = ["fetch_url", "check_address", "private_urls_allowed"]

_MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


def private_urls_allowed() -> bool:
    """Whether $BIRDCLF_ALLOW_PRIVATE_URLS lets URLs reach loopback and private addresses (tests, local demo)."""
    return os.environ.get(ENV_ALLOW_PRIVATE_URLS, "").strip().lower() in ("1", "true", "yes")


def check_address(address: str, allow_private: bool) -> None:
    """Refuse loopback, private, link-local, multicast and reserved addresses unless allowed."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    if not allow_private and (ip.is_private or ip.is_loopback or ip.is_link_local or not ip.is_global):
        raise UrlFetchError(f"URL resolves to a private, loopback or link-local address ({ip}): refused")
    if ip.is_unspecified or ip.is_multicast or (ip.is_reserved and not ip.is_loopback):
        raise UrlFetchError(f"URL resolves to a refused address ({ip})")


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an already-checked IP, keeping the host name for SNI and certificate checks."""

    def __init__(self, host: str, ip: str, **kwargs) -> None:
        super().__init__(host, context=ssl.create_default_context(), **kwargs)
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _resolve(host: str, port: int, allow_private: bool) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlFetchError(f"cannot resolve host {host!r}") from exc
    addresses = [info[4][0] for info in infos]
    for address in addresses:  # every address must pass, or DNS could pick a refused one later
        check_address(address, allow_private)
    return addresses[0]


def fetch_url(url: str, max_bytes: int, timeout: float | None = None, allow_private: bool | None = None) -> bytes:
    """GET `url` (following up to 3 checked redirects) and return at most `max_bytes` of body."""
    timeout = float(timeout or os.environ.get(ENV_URL_TIMEOUT) or DEFAULT_URL_TIMEOUT)
    allow_private = private_urls_allowed() if allow_private is None else allow_private
    deadline = time.monotonic() + timeout
    for _ in range(_MAX_REDIRECTS + 1):
        if not isinstance(url, str) or len(url) > 4096:
            raise UrlFetchError("url must be a string of at most 4096 characters")
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https"):
            raise UrlFetchError(f"only http and https URLs are fetched, not {parts.scheme or 'no scheme'!r}")
        if not parts.hostname:
            raise UrlFetchError("URL has no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise UrlFetchError(f"bad port in URL: {exc}") from exc
        ip = _resolve(parts.hostname, port, allow_private)
        remaining = max(0.1, deadline - time.monotonic())
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = _PinnedHTTPSConnection(parts.hostname, ip, port=port, timeout=remaining)
        else:
            conn = http.client.HTTPConnection(ip, port, timeout=remaining)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers={"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "birdclf",
                                                 "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urljoin(url, resp.getheader("Location"))
                continue
            if resp.status != 200:
                raise UrlFetchError(f"image URL answered HTTP {resp.status}")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise ImageTooLargeError(f"image at URL is {length} bytes, over the {max_bytes}-byte limit")
            chunks, total = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise UrlFetchError(f"image URL took longer than {timeout:g} s")
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise ImageTooLargeError(f"image at URL is over the {max_bytes}-byte limit")
                chunks.append(chunk)
            return b"".join(chunks)
        except TimeoutError as exc:
            raise UrlFetchError(f"image URL took longer than {timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise UrlFetchError(f"cannot fetch image URL: {exc}") from exc
        finally:
            conn.close()
    raise UrlFetchError(f"image URL redirected more than {_MAX_REDIRECTS} times")
