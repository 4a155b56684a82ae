"""The stats endpoint as an ASGI app, mounted in the application's own server.

``asgi_app(batcher)`` serves ``/stats``, ``/health`` and ``/events`` with exactly the routes,
parameters and JSON of the standalone server (:mod:`writebehind.integrations.serve`), inside
the server the application already runs (uvicorn, hypercorn, gunicorn's uvicorn worker), so
that several worker processes never fight over a port: each worker serves its own batcher
on the application's port. A plain ASGI 3 callable, stdlib only::

    app.mount("/writebehind", asgi_app(batcher))               # FastAPI, Starlette
    app.mount("/writebehind", asgi_app(lambda: state.batcher))  # opened in the lifespan
    application = mount(get_asgi_application(), "/writebehind", asgi_app(b))  # Django

Differences from the standalone server, all from living in someone else's server:

- ``/health`` answers 503 (``"status": "not started"`` / ``"closed"``, or no batcher yet
  when given a function that returned None) when there is no running batcher to serve.
- A following ``/events`` stream also ends after ``follow_for`` seconds (default 30; None:
  never), so that it never holds up the server's graceful shutdown, which waits for open
  responses *before* the application's lifespan closes the batcher. A client resumes with
  ``since=`` one past the last index it read. It ends too when the client disconnects or
  the batcher closes (after its ``Closed`` event), and when the client stops reading for
  ``stall_timeout`` seconds: the app then returns without finishing the response (the
  server logs that and closes the connection). At most ``max_streams`` streams at once
  (503 beyond).
- The ``Host`` header is the server's and the framework's business (``TrustedHostMiddleware``,
  ``ALLOWED_HOSTS``): mount the app on an internal route; it has no authentication.

``lifespan`` messages are acknowledged (the app has nothing to start or stop), so it can
also be served on its own; ``websocket`` connections are refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError
from ._apps import NDJSON, Stream, answer, check_source, error, head, sub_path
from ._feed import EventFeed
from ._http import HttpError
from ._wire import LineCache

if TYPE_CHECKING:
    from ._apps import BatcherSource

__all__ = ["StatsASGIApp", "asgi_app", "mount"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class StatsASGIApp:
    """The ASGI app :func:`asgi_app` returns (see the module docstring)."""

    def __init__(
        self,
        source: BatcherSource,
        *,
        max_streams: int,
        stall_timeout: float,
        follow_for: float | None,
    ) -> None:
        self._source = source
        self._max_streams = max_streams
        self._stall_timeout = stall_timeout
        self._follow_for = follow_for
        self._lines = LineCache()
        self.streams = 0
        """``/events`` responses open now."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})
        else:
            raise ValueError(f"the writebehind stats app does not speak {kind!r}")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = sub_path(scope.get("path") or "/", scope.get("root_path") or "")
        query = bytes(scope.get("query_string") or b"").decode("latin-1")
        reply = answer(self._source, scope.get("method", "GET"), path, query)
        if isinstance(reply, Stream):
            if self.streams >= self._max_streams:
                why = f"too many /events streams (max_streams={self._max_streams})"
                reply = error(HttpError(503, why))
            else:
                self.streams += 1
                try:
                    await self._stream(reply, receive, send)
                finally:
                    self.streams -= 1
                return
        try:
            async with asyncio.timeout(self._stall_timeout):
                await _start(send, reply.status, reply.content_type, reply.body, reply.headers)
                await send({"type": "http.response.body", "body": reply.body})
        except TimeoutError:
            return  # the client does not read: drop it (the server closes the connection)

    async def _stream(self, stream: Stream, receive: Receive, send: Send) -> None:
        feed = EventFeed(stream.engine, stream.since, self._lines)
        deadline = None
        if self._follow_for is not None:
            deadline = time.monotonic() + self._follow_for
        gone = asyncio.ensure_future(_disconnected(receive)) if stream.follow else None
        try:
            async with asyncio.timeout(self._stall_timeout):
                await _start(send, 200, NDJSON, None)
            while True:
                if gone is None:
                    body = await feed.next_async(0)
                else:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    body = await _unless_gone(feed.next_async(left), gone)
                    if gone.done():
                        return  # the client hung up: nobody to finish the response for
                if body:
                    async with asyncio.timeout(self._stall_timeout):
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                if not body or gone is None:
                    break  # the end (Closed was sent), follow_for ran out, or follow=0
            async with asyncio.timeout(self._stall_timeout):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            return  # stalled for stall_timeout: dropped; the writers never waited for it
        finally:
            if gone is not None:
                gone.cancel()


async def _start(
    send: Send,
    status: int,
    content_type: str,
    body: bytes | None,
    extra: tuple[tuple[str, str], ...] = (),
) -> None:
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in head(content_type, body, extra)
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _unless_gone(work: Awaitable[bytes | None], gone: asyncio.Future[None]) -> bytes | None:
    """``work``'s result, or None as soon as ``gone`` is done (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    waiting: set[asyncio.Future[Any]] = {task, gone}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    return None


async def _disconnected(receive: Receive) -> None:
    """Return when the client has disconnected."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown: the app has nothing of its own to run."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def mount(app: ASGIApp, prefix: str, stats: ASGIApp) -> ASGIApp:
    """An ASGI app that sends HTTP requests under ``prefix`` (e.g. ``"/writebehind"``) to
    ``stats`` (with ``prefix`` added to ``root_path``) and everything else, lifespan
    included, to ``app``: for Django's ``asgi.py``, or any ASGI app that cannot mount."""
    if not (prefix.startswith("/") and not prefix.endswith("/")):
        raise ConfigError(f"prefix: must start with '/' and not end with it, got {prefix!r}")

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            root = scope.get("root_path") or ""
            path = sub_path(scope.get("path") or "/", root)
            if path == prefix or path.startswith(prefix + "/"):
                await stats({**scope, "root_path": root + prefix}, receive, send)
                return
        await app(scope, receive, send)

    return dispatch


def asgi_app(
    batcher: BatcherSource,
    *,
    max_streams: int = 32,
    stall_timeout: float = 30.0,
    follow_for: float | None = 30.0,
) -> StatsASGIApp:
    """The stats endpoint of ``batcher`` as an ASGI app, to mount in your server.

    ``batcher`` is an ``AsyncBatcher`` (usually running on the server's loop), a
    thread-backed ``Batcher``, or a function returning the one to serve now (or None, then
    the app answers 503): use a function when the batcher is opened in the application's
    lifespan, after the app was mounted. ``max_streams`` bounds the ``/events`` responses
    open at once, ``stall_timeout`` how long a client may stop reading before it is dropped,
    ``follow_for`` how long a following stream lasts (None: until the client hangs up or
    the batcher closes). See the module docstring for what differs from ``serve()``.
    """
    check_source(batcher, "asgi_app")
    if not (isinstance(max_streams, int) and max_streams >= 1):
        raise ConfigError(f"max_streams: must be an integer >= 1, got {max_streams!r}")
    if not (isinstance(stall_timeout, int | float) and stall_timeout > 0):
        raise ConfigError(f"stall_timeout: must be seconds > 0, got {stall_timeout!r}")
    if follow_for is not None and not (isinstance(follow_for, int | float) and follow_for > 0):
        raise ConfigError(f"follow_for: must be seconds > 0 or None, got {follow_for!r}")
    return StatsASGIApp(
        batcher, max_streams=max_streams, stall_timeout=stall_timeout, follow_for=follow_for
    )
