"""Replaying dead letters through a batcher, and the report of what became of them."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .._errors import ConfigError, WriteBehindError
from .._receipt import Outcome
from ._codec import RecordNotReplayable

if TYPE_CHECKING:
    from ._entry import StoredEntry

__all__ = ["OriginalBatcher", "ReplayReport", "ReplaySource", "replay"]


class ReplaySource(Protocol):
    """What a replay needs of a dead-letter store (``DeadLetterStore`` has it)."""

    async def get(self, id: int) -> StoredEntry | None: ...

    async def max_id(self) -> int: ...

    async def list(
        self, *, limit: int | None = ..., after: int | None = ..., until_id: int | None = ...
    ) -> list[StoredEntry]: ...

    async def delete(self, ids: Iterable[int]) -> int: ...


class OriginalBatcher:
    """A replaying batcher's dead-letter store that keeps each record's original batcher
    name: a record the sink refuses again is stored under the name it had, not the
    replaying batcher's. :func:`replay` tells it each record's origin (``note_origin``)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._origin: dict[int, tuple[Any, str]] = {}  # id(record) -> (record, name)

    def note_origin(self, record: Any, batcher: str | None) -> None:
        if batcher is not None:
            self._origin[id(record)] = (record, batcher)  # the record kept: its id stays its

    async def put(self, entries: Any) -> None:
        kept = []
        for e in entries:
            origin = self._origin.pop(id(e.record), None)
            same = origin is not None and origin[0] is e.record
            kept.append(dataclasses.replace(e, batcher=origin[1]) if origin and same else e)
        await self.store.put(kept)

    def forget(self) -> None:
        """Drop what was noted (the records replayed have settled)."""
        self._origin.clear()

    def __getattr__(self, name: str) -> Any:  # close(), start(), ...: the store's own
        return getattr(self.store, name)


_PAGE = 500  # entries read, added and settled at a time: memory stays bounded
_DELETE = frozenset({Outcome.COMMITTED, Outcome.STALE, Outcome.COALESCED, Outcome.DEAD_LETTERED})


@dataclass(slots=True, kw_only=True)
class ReplayReport:
    """What a replay did, entry by entry, as counts.

    ``selected = refused + missing + committed + coalesced + dead_lettered + dropped + lost``
    (in a dry run: ``selected = refused + missing + replayable``).
    """

    dry_run: bool = False
    """Nothing was added or deleted; ``replayable`` counts what would have been."""
    selected: int = 0
    """Entries the replay looked at (ids asked for count even when absent)."""
    missing: int = 0
    """Ids asked for that the store does not hold."""
    refused: int = 0
    """Entries kept because their record was stored as its repr (not replayable)."""
    replayable: int = 0
    """Entries whose record decoded (all of them were added, unless ``dry_run``)."""
    committed: int = 0
    """Records the sink committed (entry deleted)."""
    coalesced: int = 0
    """Records superseded by a newer one with the same key (entry deleted: the newer record
    carries the data, and its own entry, if it fails again, is kept)."""
    dead_lettered: int = 0
    """Records the sink refused again. The engine wrote a fresh entry to the batcher's store,
    and the old one was deleted; without a store (or if it failed) the old one is kept."""
    dropped: int = 0
    """Records an overflow policy dropped (entry kept)."""
    lost: int = 0
    """Records still pending at the batcher's close deadline (entry kept)."""
    deleted: int = 0
    """Entries deleted from the store: the committed, the coalesced, and the dead-lettered
    that the batcher's own store kept afresh (one entry per record, never none)."""
    refused_ids: list[int] = field(default_factory=list)
    """The ids of the refused entries."""

    @property
    def kept(self) -> int:
        """Entries left in the store, of those selected: the refused, the dropped, the lost,
        and the dead-lettered whose fresh entry could not be written (or that had no store
        to go to)."""
        return self.refused if self.dry_run else self.refused + self.replayable - self.deleted

    def lines(self) -> list[str]:
        """The report as ``name value`` lines (what the CLI prints)."""
        names = ["selected", "missing", "refused", "replayable"]
        if not self.dry_run:
            names += ["committed", "coalesced", "dead_lettered", "dropped", "lost", "deleted"]
            names.append("kept")
        width = max(len(n) for n in names)
        return [f"{n:<{width}}  {getattr(self, n)}" for n in names]


async def replay(
    store: ReplaySource,
    batcher: Any,
    *,
    ids: Iterable[int] | None = None,
    limit: int | None = None,
    dry_run: bool = False,
) -> ReplayReport:
    """Add ``store``'s records to ``batcher``, flush, and settle each entry by its outcome.

    ``batcher`` is a started :class:`~writebehind.AsyncBatcher` (awaited on this loop) or a
    started sync :class:`~writebehind.Batcher` (its blocking calls run in a worker thread).
    Entries are taken oldest first: those with ``ids`` (when given), at most ``limit`` of
    them, and only those present when the replay began (entries the replay itself
    dead-letters are never replayed again in the same call). They go through in pages of
    500: add, ``flush()``, wait for every outcome, then delete the entries whose record came
    out ``COMMITTED`` or ``COALESCED``, and those that came out ``DEAD_LETTERED`` when the
    batcher has a dead-letter store that took the fresh entry (so each record is kept once,
    never twice and never not at all). ``DROPPED`` and ``LOST`` keep their entry; so does a
    record stored as its repr (counted as ``refused``).

    With ``dry_run=True`` nothing is added or deleted (``batcher`` may be ``None``): the
    report says how many entries would be replayed and how many are refused.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit: must be an integer >= 0 or None, got {limit!r}")
    if not dry_run and not callable(getattr(batcher, "add", None)):
        raise ConfigError("batcher: give a started AsyncBatcher or Batcher to replay into")
    report = ReplayReport(dry_run=dry_run)
    async for entries in _pages(store, ids, limit, report):
        report.selected += len(entries)
        todo: list[tuple[int, Any]] = []
        origins = {entry.id: entry.batcher for entry in entries}
        for entry in entries:
            try:
                todo.append((entry.id, entry.record()))
            except RecordNotReplayable:
                report.refused += 1
                report.refused_ids.append(entry.id)
        report.replayable += len(todo)
        if todo and not dry_run:
            await _settle(store, batcher, todo, report, origins)
    return report


async def _pages(
    store: ReplaySource, ids: Iterable[int] | None, limit: int | None, report: ReplayReport
) -> AsyncIterator[list[StoredEntry]]:
    """The entries to replay, a page at a time (ids asked for but absent count as missing)."""
    if ids is not None:
        wanted = sorted({int(i) for i in ids})[:limit]
        for start in range(0, len(wanted), _PAGE):
            found = []
            for entry_id in wanted[start : start + _PAGE]:
                entry = await store.get(entry_id)
                if entry is None:
                    report.selected += 1
                    report.missing += 1
                else:
                    found.append(entry)
            yield found
        return
    until = await store.max_id()  # entries this replay dead-letters come after it
    after, left = 0, limit
    while left is None or left > 0:
        size = _PAGE if left is None else min(_PAGE, left)
        entries = await store.list(limit=size, after=after, until_id=until)
        if entries:
            yield entries
        if len(entries) < size:
            return
        after = entries[-1].id
        if left is not None:
            left -= len(entries)


async def _settle(
    store: ReplaySource,
    batcher: Any,
    todo: list[tuple[int, Any]],
    report: ReplayReport,
    origins: dict[int, str],
) -> None:
    sync = not inspect.iscoroutinefunction(batcher.add)
    failures_before = _store_failures(batcher)
    keeper = getattr(_engine(batcher), "dead_letter", None)  # keeps the original names?
    keeper = keeper if isinstance(keeper, OriginalBatcher) else None
    receipts = []
    for entry_id, record in todo:
        if keeper is not None:
            keeper.note_origin(record, origins.get(entry_id))
        if sync:
            receipt = await asyncio.to_thread(batcher.add, record)
        else:
            receipt = await batcher.add(record)
        receipts.append((entry_id, receipt))
    if sync:
        await asyncio.to_thread(batcher.flush)
    else:
        await batcher.flush()
    outcomes: list[tuple[int, Outcome]] = []
    for entry_id, receipt in receipts:
        outcome = await asyncio.to_thread(receipt.result) if sync else await receipt
        if not isinstance(outcome, Outcome):
            raise WriteBehindError(f"a receipt gave {outcome!r}, not an Outcome")
        if receipt.superseded:  # a newer version took its place: that one carries the data
            outcome = Outcome.COALESCED  # (its receipt says the successor's outcome)
        setattr(report, outcome.value, getattr(report, outcome.value) + 1)
        outcomes.append((entry_id, outcome))
    # a record dead-lettered again has a fresh entry only if the batcher has a store and
    # the store took it; otherwise the old entry is all there is: keep it
    fresh = _has_store(batcher) and _store_failures(batcher) == failures_before
    done = [
        entry_id
        for entry_id, outcome in outcomes
        if outcome in _DELETE and (fresh or outcome is not Outcome.DEAD_LETTERED)
    ]
    report.deleted += await store.delete(done)
    if keeper is not None:
        keeper.forget()


def _engine(batcher: Any) -> Any:
    return getattr(batcher, "engine", batcher)  # the sync Batcher wraps an AsyncBatcher


def _has_store(batcher: Any) -> bool:
    return getattr(_engine(batcher), "dead_letter", None) is not None


def _store_failures(batcher: Any) -> int:
    stats = getattr(_engine(batcher), "stats", None)
    return int(getattr(stats(), "dead_letter_errors", 0)) if callable(stats) else 0
