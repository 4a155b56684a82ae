"""What the ASGI and WSGI apps share: which batcher they serve, and the answer to a request.

:func:`check_source` validates what an app was given: a batcher (``AsyncBatcher`` or
``Batcher``) or a function returning one (or ``None`` while there is none yet, e.g. before
the application's lifespan has opened it). :func:`answer` turns a request (method, path
below the mount point, query string) into a complete :class:`Reply` (``/stats``,
``/health``, every error) or a :class:`Stream` (``/events``), with the routes, parameters
and JSON of the standalone server (``_http.route``, ``_wire``). Stdlib only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError
from . import _http
from ._http import HttpError
from ._wire import document, health, snapshot

if TYPE_CHECKING:
    from .._engine import AsyncBatcher
    from .._sync import Batcher

    BatcherSource = AsyncBatcher | Batcher | Callable[[], AsyncBatcher | Batcher | None]
    """What an app serves: a batcher, or a function that returns the current one (or
    None while there is none)."""

__all__ = ["BatcherSource", "Reply", "Stream", "answer", "check_source", "sub_path"]

JSON = "application/json"
NDJSON = "application/x-ndjson"
TEXT = "text/plain; charset=utf-8"


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer: status, content type, body and extra headers."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Stream:
    """An ``/events`` answer: stream the events of ``engine`` from ``since``."""

    engine: AsyncBatcher
    since: int | None
    follow: bool


def _is_batcher(value: Any) -> bool:
    return callable(getattr(value, "stats", None)) and hasattr(value, "events")


def check_source(source: Any, what: str) -> None:
    """Raise ``ConfigError`` unless ``source`` is a batcher or a function (``what`` names
    the app for the message)."""
    if not (_is_batcher(source) or callable(source)):
        raise ConfigError(
            f"{what}: expected an AsyncBatcher, a Batcher, or a function returning one "
            f"(or None), got {source!r}"
        )


def engine_of(source: BatcherSource) -> AsyncBatcher | None:
    """The engine ``source`` names now (None if the function returned None)."""
    batcher: Any = source if _is_batcher(source) else source()  # type: ignore[operator]
    if batcher is None:
        return None
    if not _is_batcher(batcher):
        raise TypeError(f"the batcher function returned {batcher!r}, not a batcher")
    engine: AsyncBatcher = getattr(batcher, "engine", batcher)
    return engine


def sub_path(path: str, root_path: str) -> str:
    """``path`` below the mount point ``root_path``, if it starts with it (ASGI servers and
    frameworks differ on whether ``path`` includes ``root_path``: accept both)."""
    if root_path and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest or rest.startswith("/"):
            return rest or "/"
    return path or "/"


def error(exc: HttpError) -> Reply:
    """The reply to a refused request (the standalone server's one-line text body)."""
    headers = tuple((name, value) for name, _, value in (h.partition(": ") for h in exc.headers))
    return Reply(exc.status, TEXT, _http.error_body(exc), headers)


def answer(
    source: BatcherSource, method: str, path: str, query: str, *, can_follow: bool = True
) -> Reply | Stream:
    """The answer to ``method path?query`` (``path`` below the mount point)."""
    try:
        if method != "GET":  # checked first, as the standalone server does
            raise HttpError(405, "only GET is allowed", ("Allow: GET",))
        request = _http.route(path, query, _http.ROUTES)
        engine = engine_of(source)
        if engine is None:
            raise HttpError(503, "no batcher yet (the application has not opened it)")
        if request.path == "/events":
            since, follow = _http.events_params(request.query)
            if engine.loop is None:
                raise HttpError(503, "the batcher is not started")
            return Stream(engine, since, follow and can_follow)
        if request.path == "/health":
            status, doc = health(engine)
            return Reply(status, JSON, document(doc))
        return Reply(200, JSON, document(snapshot(engine)))
    except HttpError as exc:
        return error(exc)


def head(
    content_type: str, body: bytes | None, extra: tuple[tuple[str, str], ...] = ()
) -> list[tuple[str, str]]:
    """The response headers every form sends (``body`` None: a stream, no length)."""
    headers = [("Content-Type", content_type), ("Cache-Control", "no-store"), *extra]
    if body is not None:
        headers.append(("Content-Length", str(len(body))))
    return headers
