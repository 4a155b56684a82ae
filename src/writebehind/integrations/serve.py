"""The local stats endpoint that ``writebehind top`` reads: opt in, loopback, read-only.

``server = await serve(batcher)`` starts a minimal HTTP/1.1 server on the batcher's own event
loop (``serve_sync(batcher)`` does the same for the thread-backed ``Batcher``). Routes, all
``GET``, one request per connection (``Connection: close``):

- ``/health``: ``{"status": "ok", ...}``.
- ``/stats``: ``stats()`` with the batcher's name, state, configuration and the event indices
  held, under ``"schema": 1``.
- ``/events?since=N&follow=1``: newline-delimited JSON, one event per line (``"type"`` plus
  its fields; ``Closed`` nests its report), from event ``N`` (the oldest held if ``N`` is
  gone; default: the next one). ``follow=0`` ends once the held events are sent. A reader
  that falls behind gets a ``SubscriberLagged`` line and the stream goes on from its
  ``resume_from``; the response ends after ``Closed``.

Stdlib only. Each stream is one event subscription: writers never wait for it (a client
that stops reading only fills its own socket buffer, then falls behind and is told so; one
stalled for ``stall_timeout`` seconds is disconnected). Requests are bounded (line, header
count and size, time to send them) and clients are capped at ``max_clients``. The server
closes its connections on ``close()`` and when the batcher closes. There is no
authentication: it binds to 127.0.0.1 unless told otherwise, and logs a WARNING when told.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, urlsplit

from .._errors import ConfigError, WriteBehindError
from .._events import SubscriberLagged

if TYPE_CHECKING:
    from .._engine import AsyncBatcher
    from .._sync import Batcher

__all__ = ["SCHEMA", "StatsServer", "SyncStatsServer", "jsonable", "serve", "serve_sync"]

log = logging.getLogger("writebehind")

SCHEMA = 1
"""Version of the JSON documents; it rises when a field changes meaning or goes away."""

_MAX_LINE = 4096  # bytes in the request line or one header line
_MAX_HEADERS = 32
_MAX_HEADER_BYTES = 8192
_REQUEST_TIMEOUT = 5.0  # seconds a client has to send its request
_CLOSE_GRACE = 1.0  # seconds a connection gets to close before it is aborted
_SEND_BUFFER = 64 * 1024  # bytes of kernel send buffer per connection
_LINE_CACHE = 4096  # encoded event lines kept, shared by every stream
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REASONS = {
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
_ROUTES = {"/health": (), "/stats": (), "/events": ("since", "follow")}
_STATES = {"healthy": "running", "throttled": "paused", "failing": "failing"}
_STATE_EVENTS = {
    "BatchCommitted": "running",
    "BatchFailed": "failing",
    "Paused": "paused",
    "Resumed": "running",
}


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclasses.dataclass(frozen=True, slots=True)
class _Request:
    path: str
    query: dict[str, str]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses (events get ``"type"``), mappings, enums;
    non-finite floats become ``None``, callables their name, anything else its ``str``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        if hasattr(value, "index") and hasattr(value, "at"):
            out["type"] = type(value).__name__
        for f in dataclasses.fields(value):
            out[f.name] = jsonable(getattr(value, f.name))
        return out
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if callable(value):
        return f"<callable {getattr(value, '__qualname__', type(value).__name__)}>"
    return str(value)


def _loop_of(engine: AsyncBatcher) -> asyncio.AbstractEventLoop | None:
    return engine.loop


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StatsServer:
    """A running stats endpoint (see the module docstring). ``url`` is where it listens;
    ``await close()`` (or leaving ``async with``) stops it and closes every connection."""

    def __init__(
        self, engine: AsyncBatcher, *, host: str, max_clients: int, stall_timeout: float
    ) -> None:
        self._engine = engine
        self._bind_host = host
        self._loopback = _is_loopback(host)
        self._max_clients = max_clients
        self._stall_timeout = stall_timeout
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._lines: dict[int, bytes] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._closing = False  # the open connections are being aborted
        self._closed = asyncio.Event()
        self.host = host
        self.port = 0

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has finished (also after the batcher closed)."""
        return self._closed.is_set()

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._conns)

    async def _start(self, port: int) -> None:
        self._server = await asyncio.start_server(
            self._handle, self._bind_host, port, limit=_MAX_LINE
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = str(sockname[0]), int(sockname[1])
        self._watcher = asyncio.create_task(self._watch(), name=f"writebehind-serve[{self.url}]")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening, close every connection, and return when all are gone (after the
        batcher closed, streams first get a moment to send its ``Closed`` event)."""
        await self._shutdown(grace=_CLOSE_GRACE if self._engine.stats().closed else 0.0)

    async def wait_closed(self) -> None:
        """Return once the server has closed (by :meth:`close`, or the batcher closing)."""
        await self._closed.wait()

    async def _shutdown(self, grace: float) -> None:
        if self._server is None or self._stopping:
            await self._closed.wait()
            return
        self._stopping = True  # no new connections
        self._server.close()
        me = asyncio.current_task()
        streams = [t for t in self._conns if t is not me]
        if grace and streams:  # the batcher closed: let the streams send Closed and end
            await asyncio.wait(streams, timeout=grace)
        self._closing = True
        tasks = [t for t in (*self._conns, self._watcher) if t is not None and t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._closed.set()

    # -- the batcher's state ----------------------------------------------------------------
    async def _watch(self) -> None:
        """Close the server once the batcher has published its ``Closed`` event."""
        sub = self._engine.events(since=None)
        while True:
            try:
                if not await sub.next_chunk():
                    break
            except SubscriberLagged as lag:
                sub = self._engine.events(since=lag.resume_from)
        await self._shutdown(grace=_CLOSE_GRACE)

    def _snapshot(self) -> dict[str, Any]:
        engine = self._engine
        stats = engine.stats()
        doc = jsonable(stats)
        sink_state = str(getattr(stats, "sink_state", "healthy"))
        doc["held"] = stats.held
        return {
            "schema": SCHEMA,
            "batcher": engine.name,
            "state": "closed" if stats.closed else _STATES.get(sink_state, sink_state),
            "at": time.time(),
            "stats": doc,
            "config": jsonable(engine.options),
            "events": {
                "oldest": engine.events(since=0).started_at,
                "next": engine.events(since=None).started_at,
            },
        }

    # -- HTTP -----------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        sock = writer.get_extra_info("socket")
        if sock is not None:  # a stalled reader backs up here soon, not in megabytes of kernel
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        try:
            if self._stopping:
                return
            try:
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    request = await self._read_request(reader)
            except TimeoutError:
                raise _HttpError(408, "the request took too long to arrive") from None
            if len(self._conns) > self._max_clients:  # answered after reading: no reset
                raise _HttpError(503, f"too many clients (max_clients={self._max_clients})")
            await self._route(request, writer)
        except _HttpError as exc:
            body = f"{exc.status} {_REASONS[exc.status]}: {exc.message}\n".encode()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._send(writer, exc.status, "text/plain; charset=utf-8", body, exc.headers)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away, or stopped reading for stall_timeout
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # close() cancelled us: end quietly (asyncio's streams log a cancelled handler)
        finally:
            try:
                await _finish(writer, graceful=not self._closing)
            finally:
                del self._conns[task]

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request:
        line = await _read_line(reader, 414, "the request line is too long")
        parts = line.split(b" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise _HttpError(400, "only HTTP/1.1 and HTTP/1.0 are spoken here")
        headers: dict[bytes, bytes] = {}
        size = count = 0
        while True:
            line = await _read_line(reader, 431, "a header line is too long")
            if not line:
                break
            size, count = size + len(line), count + 1
            if count > _MAX_HEADERS or size > _MAX_HEADER_BYTES:
                raise _HttpError(431, "too many or too large headers")
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name):
                raise _HttpError(400, "malformed header line")
            name = name.lower()
            if name in headers and name == b"host":
                raise _HttpError(400, "more than one Host header")
            headers[name] = value.strip(b" \t")
        if method != b"GET":
            raise _HttpError(405, "only GET is allowed", ("Allow: GET",))
        if b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0":
            raise _HttpError(400, "a GET request has no body")
        host = headers.get(b"host")
        if host is None and version == b"HTTP/1.1":
            raise _HttpError(400, "HTTP/1.1 needs a Host header")
        if host is not None and self._loopback and not _loopback_host(host):
            raise _HttpError(403, "this endpoint answers only to a loopback Host")
        if not target.startswith(b"/") or not target.isascii():
            raise _HttpError(400, "the target must be an absolute path")
        url = urlsplit(target.decode("ascii"))
        if url.path not in _ROUTES:
            raise _HttpError(404, f"no route {url.path}; try /stats, /events or /health")
        try:
            pairs = parse_qsl(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
        except ValueError:
            raise _HttpError(400, "malformed query string") from None
        query = dict(pairs)
        unknown = sorted(set(query) - set(_ROUTES[url.path]))
        if unknown or len(query) != len(pairs):
            allowed = ", ".join(_ROUTES[url.path]) or "none"
            raise _HttpError(400, f"unknown or repeated parameter(s); allowed: {allowed}")
        return _Request(url.path, query)

    async def _route(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        if request.path == "/events":
            since = _int_param(request.query, "since")
            follow = request.query.get("follow", "1")
            if follow not in ("0", "1"):
                raise _HttpError(400, "follow: must be 0 or 1")
            await self._stream(writer, since, follow == "1")
            return
        if request.path == "/health":
            doc: dict[str, Any] = {"schema": SCHEMA, "status": "ok", "batcher": self._engine.name}
        else:
            doc = self._snapshot()
        body = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        await self._send(writer, 200, "application/json", body)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes | None,
        extra: tuple[str, ...] = (),
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Content-Type: {content_type}",
            "Cache-Control: no-store",
            "Connection: close",
            *extra,
        ]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        async with asyncio.timeout(self._stall_timeout):
            await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, since: int | None, follow: bool) -> None:
        """One subscription; the body ends when the connection closes (HTTP/1.1 §6.3)."""
        await self._send(writer, 200, "application/x-ndjson", None)
        sub = self._engine.events(since)
        while True:
            try:
                chunk = await sub.next_chunk() if follow else sub.drain()
            except SubscriberLagged as lag:
                missed = {"type": "SubscriberLagged", "missed": lag.missed}
                line = {**missed, "resume_from": lag.resume_from}
                writer.write(json.dumps(line).encode() + b"\n")
                sub = self._engine.events(since=lag.resume_from)
                continue
            if chunk:
                writer.write(b"".join(map(self._line, chunk)))
                async with asyncio.timeout(self._stall_timeout):
                    await writer.drain()
            if not chunk or not follow:
                return

    def _line(self, event: Any) -> bytes:
        """The encoded line of ``event``, shared by every stream that sends it."""
        line = self._lines.get(event.index)
        if line is None:
            line = json.dumps(jsonable(event), separators=(",", ":")).encode() + b"\n"
            if len(self._lines) >= _LINE_CACHE:
                del self._lines[next(iter(self._lines))]
            self._lines[event.index] = line
        return line


async def _read_line(reader: asyncio.StreamReader, status: int, too_long: str) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise _HttpError(status, too_long) from None
    return line[:-2]


def _loopback_host(host: bytes) -> bool:
    name = host.decode("latin-1").lower()
    name = name[1:].partition("]")[0] if name.startswith("[") else name.rpartition(":")[0] or name
    return _is_loopback(name)


def _int_param(query: dict[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise _HttpError(400, f"{name}: must be an integer >= 0")
    return int(text)


async def _finish(writer: asyncio.StreamWriter, *, graceful: bool) -> None:
    """Close a connection: politely if we may, else abort; never wait long."""
    if graceful:
        writer.close()
    else:
        writer.transport.abort()
    try:
        async with asyncio.timeout(_CLOSE_GRACE):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except Exception:  # a reset while closing changes nothing
        pass


def _check(host: str, port: int, max_clients: int, stall_timeout: float) -> None:
    if not isinstance(host, str) or not host:
        raise ConfigError("host: must be an address such as '127.0.0.1'")
    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise ConfigError(f"port: must be an integer from 0 (any free port) to 65535, got {port!r}")
    if not (isinstance(max_clients, int) and max_clients >= 1):
        raise ConfigError(f"max_clients: must be an integer >= 1, got {max_clients!r}")
    if not (isinstance(stall_timeout, int | float) and stall_timeout > 0):
        raise ConfigError(f"stall_timeout: must be seconds > 0, got {stall_timeout!r}")


async def serve(
    batcher: AsyncBatcher,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_clients: int = 32,
    stall_timeout: float = 30.0,
) -> StatsServer:
    """Start the stats endpoint for ``batcher`` on its (running) event loop.

    ``port=0`` picks a free port (see ``server.url``). ``host`` other than a loopback
    address exposes the batcher's counters and events without authentication: a WARNING is
    logged. Call it on the loop the batcher runs on; for the thread-backed ``Batcher`` use
    :func:`serve_sync`.
    """
    _check(host, port, max_clients, stall_timeout)
    loop = _loop_of(batcher)
    if loop is None:
        raise WriteBehindError("serve(): the batcher is not started; start it first")
    if loop is not asyncio.get_running_loop():
        raise WriteBehindError(
            "serve(): call it on the batcher's own event loop (for the thread-backed Batcher "
            "use serve_sync(batcher))"
        )
    if batcher.stats().closed:
        raise WriteBehindError("serve(): the batcher is closed")
    if not _is_loopback(host):
        log.warning(
            "writebehind[%s]: the stats endpoint listens on %r, beyond this machine; it has no "
            "authentication, so anyone who can reach it can read the counters and events",
            batcher.name,
            host,
        )
    server = StatsServer(batcher, host=host, max_clients=max_clients, stall_timeout=stall_timeout)
    await server._start(port)
    return server


class SyncStatsServer:
    """:class:`StatsServer` for the thread-backed ``Batcher``: ``url``, ``close()``, ``with``.

    The server runs on the batcher's loop thread; its methods block the calling thread.
    """

    def __init__(self, server: StatsServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self._loop = loop

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return self.server.url

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server and close its connections (a no-op once the batcher's loop
        has stopped: closing the batcher already closed the server)."""
        if self._loop.is_closed() or not self._loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.close(), self._loop)
        with contextlib.suppress(TimeoutError):
            fut.result(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def serve_sync(
    batcher: Batcher | AsyncBatcher,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_clients: int = 32,
    stall_timeout: float = 30.0,
    timeout: float = 10.0,
) -> SyncStatsServer:
    """Start the stats endpoint for a started thread-backed ``Batcher`` (or an
    ``AsyncBatcher`` running on another thread's loop), from any thread but that loop's.
    Arguments as :func:`serve`."""
    engine: AsyncBatcher = batcher.engine if hasattr(batcher, "engine") else batcher
    loop = _loop_of(engine)
    if loop is None or not loop.is_running():
        raise WriteBehindError("serve_sync(): the batcher is not started; start it first")
    if getattr(loop, "_thread_id", None) == threading.get_ident():
        raise WriteBehindError("serve_sync(): on the batcher's own loop, use 'await serve()'")
    coro = serve(engine, host=host, port=port, max_clients=max_clients, stall_timeout=stall_timeout)
    server = asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
    return SyncStatsServer(server, loop)
