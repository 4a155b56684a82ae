"""The JSON the stats endpoint sends, in every form (the standalone server, the ASGI and
the WSGI app): :func:`jsonable` turns stats, options and events into plain JSON data;
:func:`snapshot` builds the ``/stats`` document (versioned by :data:`SCHEMA`) and
:func:`health` the ``/health`` one; :class:`LineCache` encodes each event's ``/events``
line once for every stream. Stdlib only.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._events import SubscriberLagged
from .._stats import SINK_STATES  # the one list of sink states

if TYPE_CHECKING:
    from .._engine import AsyncBatcher

SCHEMA = 1
"""Version of the JSON documents; it rises when a field changes meaning or goes away."""


"""The sink's health, in the words of ``Stats.sink_state`` (and of the metrics)."""
STATES = (*SINK_STATES, "not started", "closed")
"""The ``state`` of a ``/stats`` document: the sink's health while the batcher runs, else
``not started`` or ``closed`` (the words of ``/health``)."""

LINE_CACHE = 4096  # encoded event lines kept, shared by every stream


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


def document(doc: Any) -> bytes:
    """``doc`` as compact JSON and a newline: a ``/stats`` or ``/health`` body."""
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def snapshot(engine: AsyncBatcher) -> dict[str, Any]:
    """The ``/stats`` document: ``stats()`` with the batcher's name, state, configuration
    and the event indices held."""
    stats = engine.stats()
    doc = jsonable(stats)
    doc["held"] = stats.held
    return {
        "schema": SCHEMA,
        "batcher": engine.name,
        "state": state(engine, stats),
        "at": time.time(),
        "stats": doc,
        "config": jsonable(engine.options),
        "events": {
            "oldest": engine.events(since=0).started_at,
            "next": engine.events(since=None).started_at,
        },
    }


def state(engine: AsyncBatcher, stats: Any = None) -> str:
    """One of :data:`STATES`: ``closed`` once the batcher is closing (started or not),
    ``not started`` before it starts, else its sink's health (``stats``: a ``stats()``
    already read, if any)."""
    stats = engine.stats() if stats is None else stats
    if stats.closed:
        return "closed"
    if engine.loop is None:
        return "not started"
    return str(getattr(stats, "sink_state", "healthy"))


def health(engine: AsyncBatcher) -> tuple[int, dict[str, Any]]:
    """The ``/health`` answer: 200 and ``"status": "ok"`` while the batcher runs (whatever
    its sink's health); 503 with ``"not started"`` or ``"closed"`` otherwise (the apps
    mounted in a web server can see both; the standalone server lives exactly as long as
    its batcher)."""
    now = state(engine)
    status = now if now in ("not started", "closed") else "ok"
    doc = {"schema": SCHEMA, "status": status, "batcher": engine.name}
    return (200 if status == "ok" else 503), doc


def lagged_line(lag: SubscriberLagged) -> bytes:
    """The ``/events`` line telling a reader it fell behind, and where it goes on from."""
    line = {"type": "SubscriberLagged", "missed": lag.missed, "resume_from": lag.resume_from}
    return json.dumps(line).encode() + b"\n"


class LineCache:
    """The encoded ``/events`` lines of the last ``size`` events, shared by every stream
    (safe from several threads: a WSGI server's)."""

    def __init__(self, size: int = LINE_CACHE) -> None:
        self._size = size
        self._lines: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def line(self, event: Any) -> bytes:
        """The encoded line of ``event``, encoded once for every stream that sends it."""
        line = self._lines.get(event.index)
        if line is None:
            line = json.dumps(jsonable(event), separators=(",", ":")).encode() + b"\n"
            with self._lock:
                if len(self._lines) >= self._size:
                    del self._lines[next(iter(self._lines))]
                self._lines[event.index] = line
        return line
