"""``PostgresSink(report_stale=True)``: which records of a batch the upsert skipped as stale.

The conditional upsert (``... DO UPDATE SET ... WHERE t.version IS NULL OR excluded.version
>= t.version``) skips a record whose key the table holds at a newer version. ``RETURNING``
gives the rows it inserted or updated, never the skipped ones, so the statement is wrapped
in a CTE that answers, in the same statement, with the ordinals of the rows it sent that
were *not* written (an anti-join on the key, done by the server with the column types, so
no value is compared in Python)::

    WITH u AS MATERIALIZED (SELECT * FROM unnest($1::uuid[], ...) WITH ORDINALITY AS u (..., wb_n)),
    w AS (INSERT INTO "public"."agents" AS t (...) SELECT ... FROM u ORDER BY "id"
          ON CONFLICT ("id") DO UPDATE SET ... WHERE ... RETURNING "id")
    SELECT u.wb_n - 1 FROM u WHERE u."id" IS NOT NULL
      AND NOT EXISTS (SELECT FROM w WHERE w."id" = u."id")

That is for a statement run on its own (autocommit). A merge from a staging table (COPY)
runs inside a transaction, so it stays as it is, and its row count says whether anything
was skipped: when it wrote every row staged (the usual case) nothing more is done; when it
fell short, :func:`stage_lookup` finds, in the same transaction, the staged rows the table
holds at a newer version (the merge locked every row it conflicted with, so they are as it
left them). Measured in ``benchmarks/stale_report.py``.

A row that lost to a newer one with the same key in the same batch is stale too (the
psycopg merge's ``DISTINCT ON``; the rows :func:`newest_indexed` leaves out on the asyncpg
path). A row with a NULL key column never conflicts, so it is never stale. Only statements
with the version condition report: without a version every conflicting row is
overwritten.

The ordinals are positions in one record-shape group's rows; ``_stale`` turns them back
into batch indexes (a :class:`~writebehind.WriteResult`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._ident import quote
from ._pg import newest_per_key
from ._stale import reports
from ._upsert import on_conflict

__all__ = [
    "copy_report",
    "merged",
    "newest_indexed",
    "pg_upsert",
    "psycopg_merge",
    "stage_lookup",
    "unnest_report",
]


def newest_indexed(
    names: tuple[str, ...], rows: list[tuple[Any, ...]], key: tuple[str, ...],
    version: str | None, where: Sequence[int],
) -> tuple[list[tuple[Any, ...]], Sequence[int], list[int]]:  # fmt: skip
    """:func:`newest_per_key` keeping track of positions: the rows kept, their batch
    indexes, and the batch indexes of the rows left out (older duplicates: stale)."""
    kept = newest_per_key(names, rows, key, version)
    if kept is rows:
        return rows, where, []
    ids = {id(row): i for i, row in zip(where, rows, strict=True)}
    positions = [ids[id(row)] for row in kept]
    chosen = set(positions)
    return kept, positions, [i for i in where if i not in chosen]


def _anti(src: str, key: tuple[str, ...]) -> tuple[str, str]:
    """The NOT NULL test of ``src``'s key and the join condition of ``w`` to ``src``."""
    notnull = " AND ".join(f"{src}.{quote(k)} IS NOT NULL" for k in key)
    join = " AND ".join(f"w.{quote(k)} = {src}.{quote(k)}" for k in key)
    return notnull, join


def pg_upsert(
    target: str, names: tuple[str, ...], types: Sequence[str], key: tuple[str, ...],
    version: str | None, source: str | None, report: bool, increment: tuple[str, ...] = (),
) -> str:  # fmt: skip
    """The asyncpg path's statement for one record shape: the ``unnest`` upsert (``source``
    None) or the merge from a staging table; with ``report``, the ``unnest`` upsert answers
    with the ordinals of the rows the version condition skipped (a staging merge is
    followed by :func:`stage_lookup` when its row count falls short)."""
    cols = ", ".join(quote(n) for n in names)
    keys = ", ".join(quote(k) for k in key)
    conflict = on_conflict(names, key, version, "t", increment)
    if report and source is None:
        return unnest_report(target, names, types, key, conflict)
    if source is None:
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
        # rows in key order: overlapping batches lock rows in one order, never deadlock
        select = f"SELECT * FROM unnest({arrays}) AS u ({cols})" + (
            f" ORDER BY {keys}" if key else ""
        )
    else:
        select = f"SELECT {cols} FROM {source} ORDER BY {keys}"
    return f"INSERT INTO {target} AS t ({cols}) {select}" + conflict


def unnest_report(
    target: str, names: tuple[str, ...], types: Sequence[str], key: tuple[str, ...],
    conflict: str,
) -> str:  # fmt: skip
    """The asyncpg path's ``unnest`` upsert answering with its stale rows' ordinals."""
    cols = ", ".join(quote(n) for n in names)
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
    keys = ", ".join(quote(k) for k in key)
    notnull, join = _anti("u", key)
    return (
        f"WITH u AS MATERIALIZED (SELECT * FROM unnest({arrays}) WITH ORDINALITY "
        f"AS u ({cols}, wb_n)), "
        f"w AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM u ORDER BY {keys}"
        f"{conflict} RETURNING {keys}) "
        f"SELECT u.wb_n - 1 FROM u WHERE {notnull} AND NOT EXISTS (SELECT FROM w WHERE {join})"
    )


def stage_lookup(target: str, stage: str, key: tuple[str, ...], version: str) -> str:
    """After a staging merge whose row count fell short, in its transaction: the ordinals
    (from 0, in the order sent; ``wb_n`` rises from any start) of the staged rows the table
    holds at a newer version. The merge locked every row it conflicted with, written or
    not, so no other writer changed them since."""
    join = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in key)
    v = quote(version)
    return (
        f"SELECT s.wb_n - (SELECT min(wb_n) FROM {stage}) FROM {stage} s JOIN {target} t "
        f"ON {join} WHERE (t.{v} IS NULL OR s.{v} >= t.{v}) IS NOT TRUE"
    )


def merged(status: Any) -> int:
    """The rows an ``INSERT`` wrote, from asyncpg's status (``"INSERT 0 12"``) or psycopg's
    ``rowcount``."""
    return status if isinstance(status, int) else int(str(status).rsplit(" ", 1)[-1])


def copy_report(target: str, names: tuple[str, ...], key: tuple[str, ...], version: str,
                source: str, conflict: str) -> str:  # fmt: skip
    """The psycopg path's merge (newest row per key, ``DISTINCT ON``) answering with the
    ordinals (from 0, in the order sent) of the rows it did not write: skipped by the
    version condition, or older than another row with their key in the same batch.
    ``source`` has the columns and ``wb_n`` (rising in the order the rows were sent)."""
    cols = ", ".join(quote(n) for n in names)
    keys = ", ".join(quote(k) for k in key)
    notnull = " AND ".join(f"s.{quote(k)} IS NOT NULL" for k in key)
    join = " AND ".join(f"w.{quote(k)} = p.{quote(k)}" for k in key)
    order = f"{keys}, {quote(version)} DESC NULLS LAST, wb_n DESC"
    return (
        f"WITH s AS MATERIALIZED (SELECT {cols}, wb_n FROM {source}), "
        f"p AS MATERIALIZED (SELECT DISTINCT ON ({keys}) {cols}, wb_n FROM s ORDER BY {order}), "
        f"w AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM p ORDER BY {keys}"
        f"{conflict} RETURNING {keys}) "
        f"SELECT s.wb_n - (SELECT min(wb_n) FROM s) FROM s WHERE {notnull} "
        f"AND s.wb_n NOT IN (SELECT p.wb_n FROM p JOIN w ON {join})"
    )


async def psycopg_merge(
    path: Any, cur: Any, names: tuple[str, ...], arrays: list[Any] | None, sent: int
) -> list[int]:
    """The psycopg path's merge of one record shape (``path`` is its ``CopyPath``): from
    ``unnest`` arrays, with ``report`` in the form that answers with the rows it skipped;
    or from the staging table, followed by :func:`stage_lookup` only when ``report`` is on
    and it wrote fewer rows than the ``sent`` ones. The ordinals of the rows skipped."""
    report = path.report and reports(names, path.key, path.version)
    if arrays is not None:
        await cur.execute(path._merge(names, arrays, report), arrays)
        return [r[0] for r in await cur.fetchall()] if report else []
    await cur.execute(path._merge(names, None, False))
    if not report or cur.rowcount >= sent:
        return []
    await cur.execute(stage_lookup(path.target, path.stage, path.key, path.version))
    return [r[0] for r in await cur.fetchall()]
