"""The minimal HTTP/1.1 the stats endpoint speaks: bounded request parsing and plain responses.

:func:`read_request` reads one ``GET`` request within the limits below (request line,
header count and size; the caller bounds the time with :data:`REQUEST_TIMEOUT`) and checks
it: method, body, ``Host`` (a loopback one when the server is bound to loopback), then
target and query parameters with :func:`route`, which the ASGI and WSGI apps use too (with
:func:`events_params` and :func:`error_body`), so that every form of the endpoint answers a
request alike. Anything else raises :class:`HttpError` with the status to answer.
:func:`send` writes a response head (always ``Connection: close``, ``Cache-Control:
no-store``) and optional body; :func:`finish` closes a connection without ever waiting
long. Stdlib only; no state of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import re
import socket
from collections.abc import Mapping
from urllib.parse import parse_qsl

ROUTES: Mapping[str, tuple[str, ...]] = {
    "/health": (),
    "/stats": (),
    "/events": ("since", "follow"),
}
"""Every route of the stats endpoint and the query parameters it takes."""
MAX_LINE = 4096  # bytes in the request line or one header line
MAX_HEADERS = 32
MAX_HEADER_BYTES = 8192
REQUEST_TIMEOUT = 5.0  # seconds a client has to send its request
CLOSE_GRACE = 1.0  # seconds a connection gets to close before it is aborted
SEND_BUFFER = 64 * 1024  # bytes of kernel send buffer per connection
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class HttpError(Exception):
    """A request answered with ``status`` (and ``headers``) and a one-line ``message``."""

    def __init__(self, status: int, message: str, headers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """A valid request: its route and its (known, unrepeated) query parameters."""

    path: str
    query: dict[str, str]


def is_loopback(host: str) -> bool:
    """True if ``host`` (``localhost`` or an IP address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def limit_send_buffer(writer: asyncio.StreamWriter) -> None:
    """Shrink the connection's kernel send buffer to :data:`SEND_BUFFER`, so that a stalled
    reader backs up here soon, not in megabytes of kernel memory."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


async def read_request(
    reader: asyncio.StreamReader, routes: Mapping[str, tuple[str, ...]], *, loopback: bool
) -> Request:
    """Read and check one request. ``routes`` maps each path to its allowed parameters;
    ``loopback``: the server is bound to loopback, so the ``Host`` must name loopback too."""
    line = await _read_line(reader, 414, "the request line is too long")
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(400, "only HTTP/1.1 and HTTP/1.0 are spoken here")
    headers: dict[bytes, bytes] = {}
    size = count = 0
    while True:
        line = await _read_line(reader, 431, "a header line is too long")
        if not line:
            break
        size, count = size + len(line), count + 1
        if count > MAX_HEADERS or size > MAX_HEADER_BYTES:
            raise HttpError(431, "too many or too large headers")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header line")
        name = name.lower()
        if name in headers and name == b"host":
            raise HttpError(400, "more than one Host header")
        headers[name] = value.strip(b" \t")
    if method != b"GET":
        raise HttpError(405, "only GET is allowed", ("Allow: GET",))
    if b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0":
        raise HttpError(400, "a GET request has no body")
    host = headers.get(b"host")
    if host is None and version == b"HTTP/1.1":
        raise HttpError(400, "HTTP/1.1 needs a Host header")
    if host is not None and loopback and not _loopback_host(host):
        raise HttpError(403, "this endpoint answers only to a loopback Host")
    if not target.isascii():
        raise HttpError(400, "the target must be an absolute path")
    path, _, query = target.decode("ascii").partition("?")
    return route(path, query, routes)


def route(path: str, query: str, routes: Mapping[str, tuple[str, ...]]) -> Request:
    """Check a request's ``path`` and raw ``query`` string against ``routes`` (each path
    and its allowed parameters). Shared by the standalone server and the ASGI and WSGI
    apps, so every form answers the same request the same way."""
    if not path.startswith("/") or "#" in path or "#" in query:
        raise HttpError(400, "the target must be an absolute path")
    if path not in routes:
        raise HttpError(404, f"no route {path}; try /stats, /events or /health")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise HttpError(400, "malformed query string") from None
    params = dict(pairs)
    unknown = sorted(set(params) - set(routes[path]))
    if unknown or len(params) != len(pairs):
        allowed = ", ".join(routes[path]) or "none"
        raise HttpError(400, f"unknown or repeated parameter(s); allowed: {allowed}")
    return Request(path, params)


def events_params(query: Mapping[str, str]) -> tuple[int | None, bool]:
    """``since`` and ``follow`` of an ``/events`` request (``follow`` defaults to on)."""
    since = int_param(query, "since")
    follow = query.get("follow", "1")
    if follow not in ("0", "1"):
        raise HttpError(400, "follow: must be 0 or 1")
    return since, follow == "1"


def error_body(exc: HttpError) -> bytes:
    """The one-line text body that answers ``exc``."""
    return f"{exc.status} {REASONS[exc.status]}: {exc.message}\n".encode()


async def _read_line(reader: asyncio.StreamReader, status: int, too_long: str) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(status, too_long) from None
    return line[:-2]


def _loopback_host(host: bytes) -> bool:
    name = host.decode("latin-1").lower()
    name = name[1:].partition("]")[0] if name.startswith("[") else name.rpartition(":")[0] or name
    return is_loopback(name)


def int_param(query: Mapping[str, str], name: str) -> int | None:
    """The query parameter ``name`` as an integer >= 0 (``None`` if absent)."""
    text = query.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise HttpError(400, f"{name}: must be an integer >= 0")
    return int(text)


async def send(
    writer: asyncio.StreamWriter,
    status: int,
    content_type: str,
    body: bytes | None,
    extra: tuple[str, ...] = (),
    *,
    stall_timeout: float,
) -> None:
    """Write a response head and ``body`` (``None``: a body that ends when the connection
    closes) and wait up to ``stall_timeout`` s for the client to take it."""
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Type: {content_type}",
        "Cache-Control: no-store",
        "Connection: close",
        *extra,
    ]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
    async with asyncio.timeout(stall_timeout):
        await writer.drain()


async def send_error(writer: asyncio.StreamWriter, exc: HttpError, *, stall_timeout: float) -> None:
    """Answer with ``exc`` as a one-line text body; a client gone meanwhile is ignored."""
    body = error_body(exc)
    with contextlib.suppress(ConnectionError, TimeoutError):
        await send(
            writer,
            exc.status,
            "text/plain; charset=utf-8",
            body,
            exc.headers,
            stall_timeout=stall_timeout,
        )


async def finish(writer: asyncio.StreamWriter, *, graceful: bool) -> None:
    """Close a connection: politely if we may, else abort; never wait long."""
    if graceful:
        writer.close()
    else:
        writer.transport.abort()
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except Exception:  # a reset while closing changes nothing
        pass
