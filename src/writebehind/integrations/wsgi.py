"""The stats endpoint as a WSGI app, for Django, Flask and gunicorn's sync and gthread workers.

``wsgi_app(batcher)`` serves ``/stats``, ``/health`` and ``/events`` with the routes,
parameters and JSON of the standalone server (:mod:`writebehind.integrations.serve`) from
the application's own WSGI server, so several worker processes never fight over a port.
It serves the thread-backed ``Batcher`` (or an ``AsyncBatcher`` running on another
thread's loop): ``stats()`` is read directly, which is safe from any thread, and events are
read on the batcher's own loop (``run_coroutine_threadsafe``), never from the buffer
behind its back. Stdlib only::

    from werkzeug.middleware.dispatcher import DispatcherMiddleware      # Flask
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/writebehind": wsgi_app(batcher)})

    application = mount(get_wsgi_application(), "/writebehind", wsgi_app(batcher))  # Django

``/events`` in WSGI, where each response holds a worker thread:

- ``follow=0`` answers the events held from ``since`` (a snapshot, ``Content-Length`` set),
  exactly as the standalone server does; this is what ``writebehind top`` reads.
- ``follow=1`` (the default, as in the other forms) is a *bounded* follow: it streams new
  events as they come and ends after ``follow_for`` seconds (default 10), or after the
  ``Closed`` event. A client resumes with ``since=`` one past the last index it read. With
  ``follow_for=0`` it answers like ``follow=0``. A client that stops reading blocks only
  its own worker thread (until the server's timeout); writers never wait for it.

``/health`` answers 503 when there is no running batcher (see :mod:`.asgi`). The ``Host``
header is the framework's business (``ALLOWED_HOSTS``); the app has no authentication, so
mount it on an internal route.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError
from ._apps import NDJSON, Stream, answer, check_source, head, sub_path
from ._feed import EventFeed
from ._http import REASONS
from ._wire import LineCache

if TYPE_CHECKING:
    from ._apps import BatcherSource

__all__ = ["StatsWSGIApp", "mount", "wsgi_app"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class StatsWSGIApp:
    """The WSGI app :func:`wsgi_app` returns (see the module docstring)."""

    def __init__(self, source: BatcherSource, *, follow_for: float) -> None:
        self._source = source
        self._follow_for = follow_for
        self._lines = LineCache()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        query = environ.get("QUERY_STRING") or ""
        method = environ.get("REQUEST_METHOD", "GET")
        reply = answer(self._source, method, path, query, can_follow=self._follow_for > 0)
        if isinstance(reply, Stream):
            return self._events(reply, start_response)
        start_response(_status(reply.status), head(reply.content_type, reply.body, reply.headers))
        return [reply.body]

    def _events(self, stream: Stream, start_response: StartResponse) -> Iterable[bytes]:
        feed = EventFeed(stream.engine, stream.since, self._lines)
        if not stream.follow:
            body = feed.next_blocking(0) or b""
            start_response(_status(200), head(NDJSON, body))
            return [body]
        start_response(_status(200), head(NDJSON, None))
        return self._follow(feed, time.monotonic() + self._follow_for)

    @staticmethod
    def _follow(feed: EventFeed, deadline: float) -> Iterator[bytes]:
        """New events as they come, until ``deadline`` or the end (after ``Closed``)."""
        while True:
            body = feed.next_blocking(max(0.0, deadline - time.monotonic()))
            if body:
                yield body
            if not body or time.monotonic() >= deadline:
                return


def _status(code: int) -> str:
    return f"{code} {REASONS[code]}"


def mount(app: WSGIApp, prefix: str, stats: WSGIApp) -> WSGIApp:
    """A WSGI app that sends requests under ``prefix`` (e.g. ``"/writebehind"``) to
    ``stats`` (moving the prefix to ``SCRIPT_NAME``) and every other request to ``app``:
    for Django's ``wsgi.py``, or any WSGI app without a mounting facility of its own."""
    if not (prefix.startswith("/") and not prefix.endswith("/")):
        raise ConfigError(f"prefix: must start with '/' and not end with it, got {prefix!r}")

    def dispatch(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        if path != prefix and not path.startswith(prefix + "/"):
            return app(environ, start_response)
        environ = {
            **environ,
            "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + prefix,
            "PATH_INFO": sub_path(path, prefix),
        }
        return stats(environ, start_response)

    return dispatch


def wsgi_app(batcher: BatcherSource, *, follow_for: float = 10.0) -> StatsWSGIApp:
    """The stats endpoint of ``batcher`` as a WSGI app, to mount in your server.

    ``batcher`` is a started ``Batcher`` (or an ``AsyncBatcher`` on another thread's loop),
    or a function returning the one to serve now (or None, then the app answers 503).
    ``follow_for``: seconds a following ``/events`` response lasts (0: no following; each
    holds a worker thread). See the module docstring.
    """
    check_source(batcher, "wsgi_app")
    if not (isinstance(follow_for, int | float) and follow_for >= 0):
        raise ConfigError(f"follow_for: must be seconds >= 0, got {follow_for!r}")
    return StatsWSGIApp(batcher, follow_for=follow_for)
