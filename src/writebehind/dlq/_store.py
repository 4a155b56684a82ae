"""What the SQLite and PostgreSQL dead-letter stores share: the entry as read back, the
SQL, and every operation. A backend supplies only I/O (four small methods) and how it spells
a parameter, the ``at`` column and the JSON column."""

from __future__ import annotations

import abc
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from .._deadletter import DeadLetterEntry
from .._errors import ConfigError, PermanentSinkError
from ._entry import StoredEntry
from ._replay import ReplayReport, replay
from ._rows import plain_row, to_row

__all__ = ["DeadLetterStore", "EntriesNotStored", "StoredEntry"]

log = logging.getLogger("writebehind")

COLUMNS = (
    "at",
    "batcher",
    "sink",
    "error",
    "message",
    "attempts",
    "record",
    "encoding",
    "record_type",
)
_CHUNK = 500  # ids per DELETE statement (SQLite allows 32,766 parameters; stay far below)


class EntriesNotStored(PermanentSinkError):
    """Some entries of one ``put`` could not be stored in any form; the others were.

    ``stored`` and ``unstored`` count them.
    """

    def __init__(self, message: str, *, stored: int, unstored: int) -> None:
        super().__init__(message)
        self.stored = stored
        self.unstored = unstored


def timestamp(when: float | dt.datetime) -> float:
    """``time.time()`` seconds for ``when``; a naive ``datetime`` is taken as UTC."""
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()
    if isinstance(when, int | float) and not isinstance(when, bool):
        return float(when)
    raise ConfigError(f"before: must be a datetime or time.time() seconds, got {when!r}")


class DeadLetterStore(abc.ABC):
    """The operations every dead-letter store offers, written once over a small SQL backend.

    Subclasses set :attr:`_table` (quoted, qualified) and implement the four I/O methods.
    """

    _table: str
    _record_select = "record"
    unstored: int = 0
    """Entries this store could not keep in any form, since it was made (see :meth:`put`)."""
    _json_cast = ""

    # -- what a backend provides -----------------------------------------------------------
    @abc.abstractmethod
    def _param(self, n: int) -> str:
        """The placeholder for the ``n``-th (1-based) parameter."""

    @abc.abstractmethod
    def _at_param(self, at: float) -> Any:
        """The bound value of ``at`` (seconds) for the ``at`` column."""

    @abc.abstractmethod
    def _at_value(self, raw: Any) -> float:
        """Seconds from the ``at`` column's value."""

    @abc.abstractmethod
    async def _insert(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run ``sql`` once per row, all in one transaction."""

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        """Rows of a query."""

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run a statement; the number of rows it changed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection(s) and thread(s); the next call opens them again."""

    # -- the protocol the engine calls ----------------------------------------------------
    async def put(self, entries: Sequence[DeadLetterEntry]) -> None:
        """Keep ``entries`` (one batch's) in one transaction.

        One entry the store refuses never sinks the others: if the transaction fails for a
        reason an entry can cause (a :class:`~writebehind.PermanentSinkError`), each entry
        is stored on its own, and one refused as written is kept in its plainest form (its
        record as an ASCII repr, not replayable; logged). Entries refused even so are
        counted in :attr:`unstored` and reported by :class:`EntriesNotStored`, raised after
        the others are stored. A store that is down, full or locked raises as it is
        (retriable) and stores nothing.
        """
        if not entries:
            return
        sql = self._insert_sql()
        rows = [self._row(e) for e in entries]
        try:
            await self._insert(sql, rows)
        except PermanentSinkError as exc:
            await self._put_each(sql, entries, rows, exc)

    def _insert_sql(self) -> str:
        marks = ", ".join(self._param(i) for i in range(1, len(COLUMNS) + 1))
        if self._json_cast:
            idx = COLUMNS.index("record") + 1
            marks = marks.replace(self._param(idx), self._param(idx) + self._json_cast, 1)
        return f"INSERT INTO {self._table} ({', '.join(COLUMNS)}) VALUES ({marks})"

    def _row(self, entry: DeadLetterEntry, *, plain: bool = False) -> tuple[Any, ...]:
        try:
            row = plain_row(entry) if plain else to_row(entry)
            return (self._at_param(row[0]), *row[1:])
        except Exception:
            if plain:  # pragma: no cover - plain_row never raises and its ``at`` is finite
                raise
            return self._row(entry, plain=True)

    async def _put_each(
        self,
        sql: str,
        entries: Sequence[DeadLetterEntry],
        rows: list[tuple[Any, ...]],
        error: PermanentSinkError,
    ) -> None:
        """Store each entry on its own after the batch's transaction failed with ``error``."""
        plain: list[int] = []
        lost: list[int] = []
        for i, (entry, row) in enumerate(zip(entries, rows, strict=True)):
            try:
                await self._insert(sql, [row])
                continue
            except PermanentSinkError as exc:
                error = exc
            try:
                await self._insert(sql, [self._row(entry, plain=True)])
                plain.append(i)
            except PermanentSinkError as exc:
                error = exc
                lost.append(i)
        if plain:
            log.warning(
                "writebehind: dead-letter store %r refused %d of %d entries as written (%s); "
                "kept them as the repr of their records (not replayable)",
                self, len(plain), len(entries), error,
            )  # fmt: skip
        if lost:
            self.unstored += len(lost)
            raise EntriesNotStored(
                f"dead-letter store {self!r}: {len(lost)} of {len(entries)} entries could not "
                f"be stored in any form ({error}); the other {len(entries) - len(lost)} are "
                "stored",
                stored=len(entries) - len(lost),
                unstored=len(lost),
            ) from error

    # -- reading ---------------------------------------------------------------------------
    def _select(self) -> str:
        cols = ", ".join(self._record_select if c == "record" else c for c in COLUMNS)
        return f"SELECT id, {cols} FROM {self._table}"

    def _entry(self, row: Sequence[Any]) -> StoredEntry:
        return StoredEntry(
            id=int(row[0]),
            at=self._at_value(row[1]),
            batcher=row[2],
            sink=row[3],
            error=row[4],
            message=row[5],
            attempts=int(row[6]),
            record_json=row[7],
            encoding=row[8],
            record_type=row[9],
        )

    async def list(
        self,
        *,
        limit: int | None = 100,
        after: int | None = None,
        batcher: str | None = None,
        error: str | None = None,
        until_id: int | None = None,
    ) -> list[StoredEntry]:
        """Entries oldest first (by id): at most ``limit`` (``None``: all), with an id above
        ``after`` (to page on) and at most ``until_id``, from ``batcher`` and with the error
        class ``error`` when given."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ConfigError(f"limit: must be an integer >= 0 or None, got {limit!r}")
        where: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("id", ">", after),
            ("id", "<=", until_id),
            ("batcher", "=", batcher),
            ("error", "=", error),
        ):
            if value is not None:
                params.append(value)
                where.append(f"{column} {op} {self._param(len(params))}")
        sql = self._select()
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            params.append(limit)
            sql += f" LIMIT {self._param(len(params))}"
        return [self._entry(r) for r in await self._fetch(sql, params)]

    async def get(self, id: int) -> StoredEntry | None:
        """The entry with ``id``, or ``None``."""
        rows = await self._fetch(f"{self._select()} WHERE id = {self._param(1)}", [int(id)])
        return self._entry(rows[0]) if rows else None

    async def count(self) -> int:
        """How many entries the store holds."""
        rows = await self._fetch(f"SELECT count(*) FROM {self._table}", [])
        return int(rows[0][0])

    async def max_id(self) -> int:
        """The highest id held (0 when empty)."""
        rows = await self._fetch(f"SELECT max(id) FROM {self._table}", [])
        return int(rows[0][0] or 0)

    # -- removing --------------------------------------------------------------------------
    async def delete(self, ids: Iterable[int]) -> int:
        """Remove the entries with these ids; how many there were."""
        wanted = sorted({int(i) for i in ids})
        removed = 0
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ", ".join(self._param(i) for i in range(1, len(chunk) + 1))
            removed += await self._execute(
                f"DELETE FROM {self._table} WHERE id IN ({marks})", chunk
            )
        return removed

    async def purge(self, *, before: float | dt.datetime | None = None, all: bool = False) -> int:
        """Remove every entry dead-lettered before ``before`` (a ``datetime``, naive meaning
        UTC, or ``time.time()`` seconds), or every entry with ``all=True``; how many."""
        if (before is None) == (not all):
            raise ConfigError("purge: give exactly one of before=<time> or all=True")
        if all:
            return await self._execute(f"DELETE FROM {self._table}", [])
        assert before is not None
        at = self._at_param(timestamp(before))
        return await self._execute(f"DELETE FROM {self._table} WHERE at < {self._param(1)}", [at])

    # -- replaying -------------------------------------------------------------------------
    async def replay(
        self,
        batcher: Any,
        *,
        ids: Iterable[int] | None = None,
        limit: int | None = None,
        dry_run: bool = False,
    ) -> ReplayReport:
        """Add the stored records to ``batcher``, flush, and delete each entry whose record
        came out committed, coalesced or dead-lettered again (the engine then kept a fresh
        entry). See :func:`writebehind.dlq.replay` for the details."""
        return await replay(self, batcher, ids=ids, limit=limit, dry_run=dry_run)


def rowcount(status: Any) -> int:
    """Rows changed, from a DB-API ``rowcount`` or an asyncpg status like ``DELETE 3``."""
    if isinstance(status, int):
        return max(status, 0)
    tail = str(status).rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
