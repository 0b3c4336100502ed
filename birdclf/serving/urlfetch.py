"""Fetch images from user-given URLs without becoming an open proxy: http(s) only, public addresses only, the
checked address is the one connected to, every redirect re-checked, and one total deadline for all URLs."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from urllib.parse import urljoin, urlsplit

import h11

from ..constants import MAX_TINY_PIECES, MIN_MEAN_PIECE
from ..errors import BirdclfError, BusyError, ImageTooLargeError, UrlFetchError
from .middleware import shorten

__all__ = ["MAX_REDIRECTS", "MAX_URL_LENGTH", "check_address", "check_url", "fetch_urls"]

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
MAX_URL_LENGTH = 4096
_CHUNK = 64 * 1024
_MAX_HEADER_BYTES = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)
# One answer for "does not resolve" and "resolves to an internal address": no oracle for internal DNS names.
_NOT_PUBLIC = "the URL's host does not resolve to a public internet address: refused"


def check_address(address: str, allow_private: bool) -> None:
    """Refuse loopback, private, link-local, multicast and reserved addresses unless allowed."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    refused = ip.is_unspecified or ip.is_multicast or (ip.is_reserved and not ip.is_loopback)
    if refused or (not allow_private and (ip.is_private or ip.is_loopback or ip.is_link_local or not ip.is_global)):
        logger.info("URL host resolves to %s: refused", ip)  # the address goes to the log, not to the client
        raise UrlFetchError(_NOT_PUBLIC)


def check_url(url: object) -> tuple[str, str, int, str, str]:
    """Validate a URL's form: (scheme, host, port, request target, Host header)."""
    if not isinstance(url, str) or not url.strip() or len(url) > MAX_URL_LENGTH:
        raise UrlFetchError(f"url must be a non-empty string of at most {MAX_URL_LENGTH} characters")
    if any(c in url.strip() for c in "\r\n\t\x00 ") or not url.isprintable():
        raise UrlFetchError("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url.strip())
        hostname = parts.hostname
    except ValueError as exc:  # e.g. an unclosed "[" in the host
        raise UrlFetchError("URL is malformed (check the host part)") from exc
    if parts.scheme not in ("http", "https"):
        raise UrlFetchError(f"only http and https URLs are fetched, not {parts.scheme[:20] or 'no scheme'!r}")
    if not hostname:
        raise UrlFetchError("URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UrlFetchError("bad port in URL (expected 1-65535)") from exc
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, hostname, port, target, parts.netloc.rsplit("@", 1)[-1]


async def _resolve(host: str, port: int, allow_private: bool) -> str:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:  # no such name; or not a valid one ("a..b")
        logger.info("cannot resolve %r: %s", host, exc)
        raise UrlFetchError(_NOT_PUBLIC) from exc
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise UrlFetchError(_NOT_PUBLIC)
    for address in addresses:  # every address must pass, or DNS could hand out a refused one later
        check_address(address, allow_private)
    return addresses[0]


async def _connect(scheme: str, host: str, ip: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open the connection to the checked address `ip` (TLS verified against `host` for https)."""
    context = ssl.create_default_context() if scheme == "https" else None
    try:
        return await asyncio.open_connection(ip, port, ssl=context, server_hostname=host if context else None)
    except ssl.SSLError as exc:
        logger.info("TLS failure for %s: %s", host, exc)
        raise UrlFetchError(f"TLS handshake with {host} failed (certificate not valid for it?)") from exc
    except OSError as exc:
        logger.info("cannot connect to %s (%s) port %d: %s", host, ip, port, exc)
        raise UrlFetchError(f"cannot connect to {host} port {port}") from exc


async def _get_once(url: str, max_bytes: int, allow_private: bool,
                    take: Callable[[int], bool] | None = None) -> tuple[int, str | None, bytes]:
    """One GET to the checked address: (status, Location for redirects, body); each piece of the body is counted
    by `take` (False: the server holds too much already)."""
    scheme, host, port, target, host_header = check_url(url)
    reader, writer = await _connect(scheme, host, await _resolve(host, port, allow_private), port)
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEADER_BYTES)
    try:
        request = h11.Request(method="GET", target=target, headers=[
            ("Host", host_header), ("User-Agent", "birdclf"), ("Accept", "image/*"), ("Connection", "close")])
        writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
        await writer.drain()
        status, location, chunks, total, pieces = 0, None, [], 0, 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(_CHUNK))
                await asyncio.sleep(0)  # a read of buffered data does not yield: let other requests run
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
                if status in _REDIRECTS and headers.get("location"):
                    return status, headers["location"], b""
                if status != 200:
                    raise UrlFetchError(f"image URL answered HTTP {status}")
                length = headers.get("content-length", "")
                if length.isdigit() and int(length) > max_bytes:
                    raise ImageTooLargeError(f"image at URL is {length} bytes, over the {max_bytes}-byte limit")
            elif isinstance(event, h11.Data):
                total += len(event.data)
                pieces += 1
                if total > max_bytes:
                    raise ImageTooLargeError(f"image at URL is over the {max_bytes}-byte limit")
                if pieces > MAX_TINY_PIECES and total < MIN_MEAN_PIECE * pieces:
                    raise UrlFetchError(f"image URL sent its body in over {MAX_TINY_PIECES} pieces of under "
                                        f"{MIN_MEAN_PIECE} bytes on average: refused")
                if take is not None and not take(len(event.data)):
                    raise BusyError("the server is holding too many images at once; please try again in a few "
                                    "seconds")
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, location, b"".join(chunks)
    except h11.RemoteProtocolError as exc:
        logger.info("bad HTTP from %s: %s", host, exc)
        raise UrlFetchError(f"{host} sent a malformed HTTP response") from exc
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        logger.info("connection to %s broke: %s", host, exc)
        raise UrlFetchError(f"the connection to {host} broke off") from exc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _fetch(url: str, max_bytes: int, allow_private: bool, take: Callable[[int], bool] | None) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = await _get_once(url, max_bytes, allow_private, take)
        if location is None:
            return body
        try:
            url = urljoin(url, location)
        except ValueError as exc:
            raise UrlFetchError("image URL redirected to a malformed URL") from exc
    raise UrlFetchError(f"image URL redirected more than {MAX_REDIRECTS} times")


async def fetch_urls(urls: Sequence[str], max_bytes: int, timeout: float, allow_private: bool = False,
                     take: Callable[[int], bool] | None = None) -> list[bytes]:
    """GET every URL at once (each up to `max_bytes`, redirects checked) within one deadline for them all; every
    piece received is counted by `take` (the request's share of the server's upload budget)."""
    for url in urls:
        check_url(url)
    tasks = [asyncio.ensure_future(_fetch(url, max_bytes, allow_private, take)) for url in urls]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
        failed = [(url, task) for url, task in zip(urls, tasks)
                  if task.done() and not task.cancelled() and task.exception() is not None]
        if failed:
            url, task = failed[0]
            exc = task.exception()
            if isinstance(exc, BirdclfError) and len(urls) > 1:
                raise type(exc)(f"{shorten(url)}: {exc}") from exc
            raise exc  # type: ignore[misc]
        slow = [shorten(url) for url, task in zip(urls, tasks) if not task.done()]
        if slow:
            raise UrlFetchError(f"image URL took longer than {timeout:g} s: {', '.join(slow)}")
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # every task's outcome is retrieved

