"""What both SQL sinks share to report stale records (``report_stale=True``): where each
row of a record-shape group came from in the batch, whether a group's upsert can skip rows,
and the batch indexes it skipped as a :class:`~writebehind.WriteResult`.

``PostgresSink`` learns the skipped rows from the upsert itself (``_pg_stale``).
``SQLiteSink`` writes with multi-row statements (``_sqlite_batch``) that return no rows, but
their ``rowcount`` is the rows inserted or updated: equal to the rows sent, nothing was
skipped and nothing more is done (the usual case). When it falls short, the rows are looked
up in the same transaction (:func:`sqlite_stale`, one ``VALUES`` query per 500 rows,
compared by SQLite with the column's affinity as the upsert compares them): stale if the
table holds its key and the upsert's condition is not true for it, i.e. the row holds a
newer version (or the record's version is NULL and the row's is not). So a record superseded
by a newer one with its key in the same batch reads stale too, as on the PostgreSQL side.
Writing with ``RETURNING`` instead was measured (``benchmarks/stale_report.py``): it costs
throughput in every batch, stale rows or not.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from .._ident import quote
from ._protocol import WriteResult
from ._records import Rows, group_rows

__all__ = ["Where", "group_indexed", "reports", "sqlite_stale", "stale_result"]

Where = dict[tuple[str, ...], Sequence[int]]
"""Per record-shape group, the batch index of each of its rows."""


def group_indexed(batch: list[Any], track: bool = True) -> tuple[Rows, Where]:
    """:func:`group_rows`, and where each row came from (with ``track``; else ``{}``). One
    shape (the usual case): the rows are the batch in order. Several: each record is read
    alone, with its own names."""
    groups = group_rows(batch)
    if not track:
        return groups, {}
    if len(groups) == 1:
        return groups, {next(iter(groups)): range(len(batch))}
    out: Rows = {}
    where: dict[tuple[str, ...], list[int]] = {}
    for i, record in enumerate(batch):
        ((names, rows),) = group_rows([record]).items()
        out.setdefault(names, []).extend(rows)
        where.setdefault(names, []).append(i)
    return out, dict(where)


def reports(names: tuple[str, ...], key: tuple[str, ...], version: str | None) -> bool:
    """Whether the upsert for ``names`` has the version condition (so it can skip rows)."""
    return bool(key) and version is not None and version in names and set(names) > set(key)


def sqlite_stale(
    conn: sqlite3.Connection, names: tuple[str, ...], rows: list[tuple[Any, ...]], sink: Any
) -> list[int]:
    """The ordinals of ``rows`` (just upserted, in this transaction, by ``sink``, a
    ``SQLiteSink``) that the upsert skipped."""
    table, key, version = sink.table, sink.key, sink.version
    if version is None or not reports(names, key, version):
        return []
    t, v = quote(table), quote(version)
    width = len(key) + 2  # the ordinal, the key, the version
    chunk = max(1, min(500, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    cols = ", ".join(f"c{i}" for i in range(width))
    match = " AND ".join(f"{t}.{quote(k)} = b.c{i}" for i, k in enumerate(key, start=1))
    cond = f"({t}.{v} IS NULL OR b.c{width - 1} >= {t}.{v}) IS NOT TRUE"
    picks = [names.index(k) for k in key] + [names.index(version)]
    found: list[int] = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        marks = ", ".join("(" + ", ".join("?" * width) + ")" for _ in part)
        sql = f"WITH b({cols}) AS (VALUES {marks}) SELECT b.c0 FROM b JOIN {t} ON {match}"
        sql += f" WHERE {cond}"
        args = [x for n, row in enumerate(part, start) for x in (n, *[row[i] for i in picks])]
        found.extend(r[0] for r in conn.execute(sql, args))
    return found


def stale_result(
    stale: dict[tuple[str, ...], list[int]], where: Where, dropped: Sequence[int] = ()
) -> WriteResult | None:
    """Ordinals per group (and batch indexes already known stale) as batch indexes."""
    found = [where[names][n] for names, ordinals in stale.items() for n in ordinals]
    found.extend(dropped)
    return WriteResult(stale=sorted(found)) if found else None
