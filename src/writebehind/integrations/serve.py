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

This module is the server's lifecycle and routes; the HTTP it speaks is in ``_http`` and the
JSON it sends in ``_wire``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .._errors import ConfigError, WriteBehindError
from .._events import SubscriberLagged
from . import _http
from ._http import CLOSE_GRACE, HttpError, Request, is_loopback
from ._wire import SCHEMA, LineCache, document, health, jsonable, lagged_line, snapshot

if TYPE_CHECKING:
    from .._engine import AsyncBatcher
    from .._sync import Batcher

__all__ = ["SCHEMA", "StatsServer", "SyncStatsServer", "jsonable", "serve", "serve_sync"]

log = logging.getLogger("writebehind")


def _loop_of(engine: AsyncBatcher) -> asyncio.AbstractEventLoop | None:
    return engine.loop


class StatsServer:
    """A running stats endpoint (see the module docstring). ``url`` is where it listens;
    ``await close()`` (or leaving ``async with``) stops it and closes every connection."""

    def __init__(
        self, engine: AsyncBatcher, *, host: str, max_clients: int, stall_timeout: float
    ) -> None:
        self._engine = engine
        self._bind_host = host
        self._loopback = is_loopback(host)
        self._max_clients = max_clients
        self._stall_timeout = stall_timeout
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._lines = LineCache()
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
            self._handle, self._bind_host, port, limit=_http.MAX_LINE
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
        await self._shutdown(grace=CLOSE_GRACE if self._engine.stats().closed else 0.0)

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
        await self._shutdown(grace=CLOSE_GRACE)

    # -- HTTP -----------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        _http.limit_send_buffer(writer)
        try:
            if self._stopping:
                return
            try:
                async with asyncio.timeout(_http.REQUEST_TIMEOUT):
                    request = await _http.read_request(
                        reader, _http.ROUTES, loopback=self._loopback
                    )
            except TimeoutError:
                raise HttpError(408, "the request took too long to arrive") from None
            if len(self._conns) > self._max_clients:  # answered after reading: no reset
                raise HttpError(503, f"too many clients (max_clients={self._max_clients})")
            await self._route(request, reader, writer)
        except HttpError as exc:
            await _http.send_error(writer, exc, stall_timeout=self._stall_timeout)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away, or stopped reading for stall_timeout
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # close() cancelled us: end quietly (asyncio's streams log a cancelled handler)
        finally:
            try:
                await _http.finish(writer, graceful=not self._closing)
            finally:
                del self._conns[task]

    async def _route(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if request.path == "/events":
            since, follow = _http.events_params(request.query)
            await self._stream(reader, writer, since, follow)
            return
        status, doc = health(self._engine) if request.path == "/health" else (200, None)
        body = document(doc if doc is not None else snapshot(self._engine))
        await self._send(writer, status, "application/json", body)

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        since: int | None,
        follow: bool,
    ) -> None:
        """One subscription; the body ends when the connection closes (HTTP/1.1 §6.3).
        A following stream also ends as soon as the client hangs up, even while no event
        comes, so gone clients never hold a ``max_clients`` slot."""
        await self._send(writer, 200, "application/x-ndjson", None)
        sub = self._engine.events(since)
        gone = asyncio.ensure_future(reader.read(1)) if follow else None
        try:
            while True:
                try:
                    chunk = await self._next(sub, gone) if follow else sub.drain()
                except SubscriberLagged as lag:
                    writer.write(lagged_line(lag))
                    sub = self._engine.events(since=lag.resume_from)
                    continue
                if chunk:
                    writer.write(b"".join(map(self._lines.line, chunk)))
                    async with asyncio.timeout(self._stall_timeout):
                        await writer.drain()
                if not chunk or not follow:
                    return
        finally:
            if gone is not None:
                gone.cancel()

    @staticmethod
    async def _next(sub: Any, gone: asyncio.Future[bytes] | None) -> list[Any]:
        """The next events, or [] once the client has hung up (or sent anything more)."""
        nxt = asyncio.ensure_future(sub.next_chunk())
        assert gone is not None
        await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
        if nxt.done():
            return list(nxt.result())
        nxt.cancel()
        return []

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes | None
    ) -> None:
        await _http.send(writer, status, content_type, body, stall_timeout=self._stall_timeout)


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
    if not is_loopback(host):
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
    if engine._intake.on_loop_thread():
        raise WriteBehindError("serve_sync(): on the batcher's own loop, use 'await serve()'")
    coro = serve(engine, host=host, port=port, max_clients=max_clients, stall_timeout=stall_timeout)
    server = asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
    return SyncStatsServer(server, loop)
