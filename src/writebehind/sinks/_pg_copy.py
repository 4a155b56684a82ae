"""``PostgresSink``'s psycopg path: binary COPY into a per-connection temporary table, then
one ordered merge.

Per batch, on one connection, in one transaction::

    COPY "wb_copy_agents_1a2b3c4d" ("id", "status", "updated_at") FROM STDIN (FORMAT BINARY)
    INSERT INTO "public"."agents" AS t ("id", "status", "updated_at")
    SELECT DISTINCT ON ("id") "id", "status", "updated_at" FROM "wb_copy_agents_1a2b3c4d"
    ORDER BY "id", "updated_at" DESC NULLS LAST, wb_n DESC
    ON CONFLICT ("id") DO UPDATE SET ... WHERE t."updated_at" IS NULL OR excluded... >= t...

The staging table is created once per connection (``CREATE TEMP TABLE ... ON COMMIT DELETE
ROWS AS SELECT <the table's columns> ... WITH NO DATA``, plus an identity column ``wb_n``
that numbers the rows in the order they were sent), so a write is BEGIN, COPY, merge, COMMIT
and nothing else. Rows go in key order (no deadlock between overlapping writers); a key that
appears twice in one write keeps its newest row (greatest version, then the later one),
decided by the server, not by Python. Batches below ``copy_min`` records are one statement
instead (``unnest`` of arrays, the same merge): four round trips cost more than COPY saves
there (docs/postgres.md has the measurement).

Where the connections come from, and what a failed or cancelled write does to its
connection, is ``_pg_psycopg``'s.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

from .._errors import ConfigError
from .._ident import quote
from ._pg import TYPES_SQL
from ._pg_stale import copy_report, psycopg_merge
from ._upsert import on_conflict

__all__ = ["COPY_MIN", "CopyPath", "Stale", "import_psycopg"]

COPY_MIN = 16
"""Below this many records a write is one ``unnest`` statement, not COPY + merge."""
UNIQUE_SQL = """
SELECT array_agg(a.attname::text ORDER BY a.attname)
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indpred IS NULL
GROUP BY i.indexrelid
"""
_TEXT_OID = 25
Stale = dict[tuple[str, ...], list[int]]
"""Per record-shape group, the ordinals of the rows a merge did not write."""


def import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(
            "PostgresSink(driver='psycopg') needs psycopg 3: pip install 'writebehind[psycopg]'"
        ) from exc
    return psycopg


class CopyPath:
    """Writes one batch's rows, grouped by record shape, on a psycopg connection."""

    def __init__(
        self, *, schema: str, table: str, key: tuple[str, ...], version: str | None,
        method: str, copy_min: int = COPY_MIN, report: bool = False,
        increment: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.target = f"{quote(schema)}.{quote(table)}"
        digest = hashlib.sha1(f"{schema}.{table}".encode()).hexdigest()[:8]
        self.stage_name = f"wb_copy_{table[:40]}_{digest}"
        self.stage = quote(self.stage_name)
        self.key, self.version, self.method = key, version, method
        self.increment = increment  # columns that add (_increment)
        self.report = report  # report_stale: merges answer with the rows they skipped
        self.copy_min = 1 if method == "copy" else copy_min
        self.columns: dict[str, str] = {}
        self.oids: dict[str, int] = {}  # column -> the oid its values are dumped as; 0: none
        self._sql: dict[tuple[str, ...], str] = {}
        self._ready: weakref.WeakSet[Any] = weakref.WeakSet()  # connections with the stage
        self.json: set[str] = set()
        self.arrays: set[str] = set()  # array columns: unnest would flatten them, so COPY
        self.statements = 0

    # -- catalog ---------------------------------------------------------------------------
    async def read_catalog(self, conn: Any) -> tuple[list[tuple[Any, ...]], list[set[str]]]:
        """The table's columns (name, type, category, base type) and its unique column sets."""
        psycopg = import_psycopg()
        async with conn.cursor() as cur:
            await cur.execute(TYPES_SQL, (self.target,))
            info = await cur.fetchall()
            await cur.execute(UNIQUE_SQL, (self.target,))
            uniques = [set(r[0]) for r in await cur.fetchall()]
        if not conn.autocommit:
            await conn.rollback()  # a pool of the user's: leave no transaction open
        known = psycopg.adapters.types
        self.arrays = {r[0] for r in info if r[2] == "A"}
        enums = {r[4] for r in info if r[5] == "e"}
        for name, pg_type, _, _, oid, typtype, base, _elem in info:
            self.columns[name] = pg_type
            if typtype == "d" and base:  # a domain: its base type's binary format
                oid = base
            if typtype == "e" or oid in enums:
                oid = _TEXT_OID  # an enum's binary format is its label's text
            self.oids[name] = oid if known.get(oid) is not None else 0
            if pg_type in ("json", "jsonb"):
                self.json.add(name)
        return [r[:4] for r in info], uniques

    def copyable(self, names: tuple[str, ...]) -> bool:
        return all(self.oids.get(n) for n in names)

    # -- writing ---------------------------------------------------------------------------
    async def write(self, conn: Any, groups: dict[tuple[str, ...], list[Any]]) -> Stale:
        """Every group of rows in one transaction (or one statement, in autocommit); with
        ``report``, the ordinals of each group's rows that the merge did not write."""
        items = list(groups.items())
        copies = [self._use_copy(names, rows) for names, rows in items]
        stale: Stale = {}
        if len(items) == 1 and not copies[0] and conn.autocommit:
            stale[items[0][0]] = await self._statement(conn, *items[0])  # atomic on its own
            return stale
        await self._transaction(conn, items, copies, stale)
        return stale

    async def _transaction(
        self, conn: Any, items: list[tuple[tuple[str, ...], list[Any]]], copies: list[bool],
        stale: Stale,
    ) -> None:  # fmt: skip
        if self.key and any(copies) and conn not in self._ready:
            # outside the write's transaction: a rollback of the write keeps the table
            async with conn.transaction():
                await self._create_stage(conn)
            self._ready.add(conn)
        staged = False
        async with conn.transaction():
            for (names, rows), copy in zip(items, copies, strict=True):
                if not copy:
                    stale[names] = await self._statement(conn, names, rows)
                    continue
                if staged:
                    await conn.execute(f"TRUNCATE {self.stage}")  # the last shape's rows
                stale[names] = await self._copy(conn, names, rows)
                staged = bool(self.key)

    def _use_copy(self, names: tuple[str, ...], rows: list[Any]) -> bool:
        if not self.arrays.isdisjoint(names):
            return True
        return self.method != "unnest" and len(rows) >= self.copy_min and self.copyable(names)

    async def _copy(self, conn: Any, names: tuple[str, ...], rows: list[Any]) -> list[int]:
        cols = ", ".join(quote(n) for n in names)
        into = self.stage if self.key else self.target
        async with conn.cursor() as cur:
            if not self.json.isdisjoint(names):
                from psycopg.types.json import set_json_dumps

                set_json_dumps(_as_is, cur)  # the sink made JSON text already
            async with cur.copy(f"COPY {into} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([self.oids[n] for n in names])
                await _send(copy, rows)
            found = await psycopg_merge(self, cur, names, None, len(rows)) if self.key else []
        self.statements += 1
        return found

    async def _create_stage(self, conn: Any) -> None:
        cols = ", ".join(quote(c) for c in self.columns)
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} ON COMMIT DELETE ROWS AS "
            f"SELECT {cols} FROM {self.target} WITH NO DATA"
        )
        await conn.execute(
            f"ALTER TABLE {self.stage} ADD COLUMN IF NOT EXISTS wb_n bigint "
            "GENERATED ALWAYS AS IDENTITY"
        )

    def forget(self, conn: Any) -> None:
        """``conn`` may have lost its staging table (an error, a reset): make it again."""
        self._ready.discard(conn)

    async def _statement(self, conn: Any, names: tuple[str, ...], rows: list[Any]) -> list[int]:
        found: list[int] = []
        async with conn.cursor() as cur:
            arrays = [list(c) for c in zip(*rows, strict=True)]
            if self.key:
                found = await psycopg_merge(self, cur, names, arrays, len(rows))
            else:
                await cur.execute(self._append(names), arrays)
        self.statements += 1
        return found

    def _append(self, names: tuple[str, ...]) -> str:
        cols = ", ".join(quote(n) for n in names)
        arrays = ", ".join(f"%s::{self.columns[n]}[]" for n in names)
        return f"INSERT INTO {self.target} ({cols}) SELECT * FROM unnest({arrays})"

    def _merge(self, names: tuple[str, ...], arrays: list[Any] | None, report: bool) -> str:
        """The merge from the staging table (``arrays`` None) or from ``unnest`` arrays."""
        cache = (*names, "" if arrays is None else "unnest", "report" if report else "")
        sql = self._sql.get(cache)
        if sql is not None:
            return sql
        cols = ", ".join(quote(n) for n in names)
        keys = ", ".join(quote(k) for k in self.key)
        if arrays is None:
            source = self.stage
        else:
            typed = ", ".join(f"%s::{self.columns[n]}[]" for n in names)
            source = f"unnest({typed}) WITH ORDINALITY AS u ({cols}, wb_n)"
        if report and self.version is not None:
            sql = copy_report(
                self.target, names, self.key, self.version, source,
                on_conflict(names, self.key, self.version, "t", self.increment),
            )  # fmt: skip
            self._sql[cache] = sql
            return sql
        order = keys
        if self.version is not None and self.version in names:
            order += f", {quote(self.version)} DESC NULLS LAST"
        # newest row per key (a tie: the later one), rows in key order: no deadlocks
        select = f"SELECT DISTINCT ON ({keys}) {cols} FROM {source} ORDER BY {order}, wb_n DESC"
        sql = f"INSERT INTO {self.target} AS t ({cols}) {select}"
        sql += on_conflict(names, self.key, self.version, "t", self.increment)
        self._sql[cache] = sql
        return sql


async def _send(copy: Any, rows: list[Any]) -> None:
    """``rows`` into the COPY: formatted in one synchronous loop, awaiting only when
    psycopg's buffer is full (``AsyncCopy.write_row`` is a coroutine call per row)."""
    formatter = getattr(copy, "formatter", None)
    if formatter is None:  # not psycopg 3.1-3.3's layout: the public way
        for row in rows:
            await copy.write_row(row)
        return
    write_row = formatter.write_row
    for row in rows:
        if data := write_row(row):
            await copy.write(data)


def _as_is(text: Any) -> Any:
    return text
