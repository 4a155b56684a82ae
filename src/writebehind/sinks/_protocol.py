"""The Sink protocol: one required async method.

Any object with ``async def write(self, batch: list) -> None`` is a sink. ``write`` either
commits the whole batch or raises: a :class:`~writebehind.SinkError` whose ``retriable``
says whether trying again can help (other exceptions are classified by
:func:`writebehind._retry.is_retriable`). A sink that can tell which records of a committed
batch changed nothing (its conditional upsert skipped them: the store held a newer version)
returns a :class:`WriteResult` naming them; they resolve ``Outcome.STALE``. Returning
``None`` (or anything that is not a ``WriteResult``) means every record changed the store:
``Outcome.COMMITTED``. Optional hooks, called when present:
``async start()`` when the batcher starts (raise ``ConfigError`` there for a missing table),
and ``async close()`` when it closes.

:func:`check_sink_keys` is what the batcher runs at start: a sink that upserts on named
columns (``key``, ``version``) must agree with the batcher's options.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._errors import ConfigError

__all__ = ["Mismatch", "Sink", "WriteResult", "check_sink", "check_sink_keys", "key_mismatch"]

log = logging.getLogger("writebehind")


@runtime_checkable
class Sink(Protocol):
    """Where batches land."""

    async def write(self, batch: list[Any]) -> WriteResult | None:
        """Write every record of ``batch`` in one transaction, or raise. Return ``None``, or
        a :class:`WriteResult` naming the records the write skipped as stale."""
        ...


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a sink's committed write may report: the records it skipped as stale.

    ``stale`` holds indexes into the batch the sink was given (0-based) of records whose
    write changed nothing because the store already held their key at a newer version
    (the conditional upsert's ``WHERE`` was false). Those records resolve
    ``Outcome.STALE`` (counted in ``committed`` and in ``stale``); the others
    ``COMMITTED``. An index outside the batch, or repeated, is ignored.
    """

    stale: Sequence[int] = ()


@dataclass(frozen=True)
class Mismatch:
    """How a sink's ``key``/``version`` disagree with the batcher's."""

    message: str
    fatal: bool
    """True: refuse at start (``ConfigError``); False: log a WARNING once at start."""


def _names(spec: Any) -> frozenset[str] | None:
    """A field spec as a set of field names; None when it cannot be compared (a callable)."""
    if spec is None:
        return frozenset()
    if isinstance(spec, str):
        return frozenset((spec,))
    if isinstance(spec, tuple) and all(isinstance(s, str) for s in spec):
        return frozenset(spec)
    return None


def _columns(names: frozenset[str] | None, sink: Any) -> frozenset[str] | None:
    """The batcher's field names as the sink's columns: a sink made by ``from_model`` reads
    an ORM instance's attribute ``uid`` into column ``user_id`` (its ``record_fields``), so
    a batcher reading ``uid`` agrees with a sink keyed on ``user_id``."""
    fields = getattr(sink, "record_fields", None)
    if not names or not isinstance(fields, Mapping) or not fields:
        return names
    return frozenset(fields.get(n, n) for n in names)


def _show(names: frozenset[str]) -> str:
    return repr(next(iter(names))) if len(names) == 1 else repr(tuple(sorted(names)))


def key_mismatch(key: Any, version: Any, sink: Any) -> Mismatch | None:
    """Compare the batcher's ``key``/``version`` options with the sink's, for sinks that
    have them (``SQLiteSink``, ``PostgresSink``: a tuple ``key`` and a ``version``).

    Refused (fatal): both name a key and the names differ, or both name a version and they
    differ. The buffer would coalesce records the table keeps apart (or keep apart records
    the table merges), or the two would disagree on which record is newest, and either
    drops records silently as ``COALESCED``; nothing could make such a pair useful, and the
    fix is one word. A warning: the batcher coalesces by key but the sink appends (no key),
    so the table gets only the newest record per key in each linger window; or the sink
    orders by a version the batcher does not know, so within a linger window a later add()
    with an older version supersedes a newer one before the upsert could keep it. A batcher
    without a key (no coalescing) or with a callable key or version is not compared. For a
    sink made by ``from_model``, the batcher's names may be the model's attribute names
    (``record_fields`` maps them to columns).
    """
    sink_key = getattr(sink, "key", None)
    if not isinstance(sink_key, tuple) or not hasattr(sink, "version"):
        return None  # not a sink that upserts on named columns
    given = _names(key)
    mine, theirs = _columns(given, sink), frozenset(sink_key)
    if not mine:  # no coalescing (None) or a callable: nothing to compare
        return None
    sink_name, shown = type(sink).__name__, _show(given or mine)  # the names as given
    if not theirs:
        return Mismatch(
            f"the batcher coalesces records by key {shown}, but {sink_name} has no key "
            f"(it appends): the table gets only the newest record per key in each linger "
            f"window. Drop key= from the batcher to append every record",
            fatal=False,
        )
    if mine != theirs:
        return Mismatch(
            f"key: the batcher's key {shown} differs from {sink_name}'s key "
            f"{_show(theirs)}: the buffer would coalesce records the table keeps apart (or "
            f"the other way round), dropping some as COALESCED. Give both the same key",
            fatal=True,
        )
    given_v = _names(version)
    mine_v = _columns(given_v, sink)
    theirs_v = _names(getattr(sink, "version", None))
    if mine_v is None or theirs_v is None:
        return None
    if mine_v and theirs_v and mine_v != theirs_v:
        shown = _show(given_v or mine_v)
        return Mismatch(
            f"version: the batcher's version {shown} differs from {sink_name}'s "
            f"version {_show(theirs_v)}: the buffer and the table would disagree on which "
            f"record is newest. Give both the same version",
            fatal=True,
        )
    if theirs_v and not mine_v:
        return Mismatch(
            f"{sink_name} orders rows by version {_show(theirs_v)}, but the batcher has no "
            f"version=: within a linger window a later add() supersedes an earlier one even "
            f"if its version is older. Pass version={_show(theirs_v)} to the batcher too",
            fatal=False,
        )
    return None


def check_sink_keys(key: Any, version: Any, sink: Any, merge: Any = None) -> None:
    """At start: raise ``ConfigError`` for a fatal :func:`key_mismatch`, log a WARNING
    (once: the batcher starts once) for the others. A sink that adds columns
    (``increment=``) behind a batcher that coalesces by key without ``merge=`` is refused:
    the newer record would replace the older one's delta in the buffer, and it would be
    lost without a word."""
    adds = getattr(sink, "increment", ())
    if adds and isinstance(adds, tuple) and key is not None and merge is None:
        raise ConfigError(
            f"merge: the sink adds {', '.join(map(repr, adds))} (increment=), but the "
            f"batcher coalesces records by key without merge=, so a newer record would "
            f"replace an older one's delta before it is written; pass "
            f"merge=writebehind.merge.sum_fields({', '.join(map(repr, adds))}) (sink {sink!r})"
        )
    problem = key_mismatch(key, version, sink)
    if problem is None:
        return
    if problem.fatal:
        raise ConfigError(f"{problem.message} (sink {sink!r})")
    log.warning("writebehind: %s (sink %r)", problem.message, sink)


def check_sink(sink: Any) -> None:
    """``ConfigError`` unless ``sink`` has an ``async def write(self, batch)``."""
    write = getattr(sink, "write", None)
    if not callable(write):
        raise ConfigError("sink: must have an 'async def write(self, batch)' method")
    plain = inspect.isfunction(write) or inspect.ismethod(write)
    if plain and not inspect.iscoroutinefunction(write):
        raise ConfigError(
            f"sink: {type(sink).__name__}.write is a plain 'def'; the engine awaits it. Make it "
            f"'async def write(self, batch)', or wrap a sync function in "
            f"writebehind.CallableSink(fn), which runs it on a worker thread"
        )
