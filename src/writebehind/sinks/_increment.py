"""``increment=("views",)`` on both SQL sinks: columns the upsert *adds* to instead of
overwriting, for the deltas a ``merge=wb.merge.sum_fields("views")`` batcher lands::

    ON CONFLICT ("page") DO UPDATE SET
        "views" = COALESCE(t."views", 0) + COALESCE(excluded."views", 0),
        "title" = excluded."title"

A new row (no conflict) is inserted with the delta as its value; a NULL in the table, or in
the record, counts as 0 when adding.

**Versions.** With ``version=`` the plain upsert is conditional (``WHERE excluded.v >=
t.v``), which would drop a delta that arrives with an older version. An increment is not a
newer *state* but an amount to add, so with increment columns the increments always apply,
and the version condition moves into each other column instead (``_upsert``)::

    "views" = COALESCE(t."views", 0) + COALESCE(excluded."views", 0),
    "status" = CASE WHEN t."v" IS NULL OR excluded."v" >= t."v"
                    THEN excluded."status" ELSE t."status" END,
    "v" = CASE WHEN ... THEN excluded."v" ELSE t."v" END

**report_stale** is refused with ``increment=``: every record's deltas land, so none is
stale, and a record whose other columns lost to a newer version has still changed the row.

**Duplicate keys in one batch.** PostgreSQL cannot update a row twice in one statement, so
the PostgreSQL sink keeps one row per key: the newest (as without increment), with the
increment columns summed over all the key's rows (:func:`sum_per_key`). SQLite writes the
rows one after the other (``executemany``), each adding to the last.

Writes are at least once: a batch retried after a commit whose answer was lost (docs/
postgres.md, "Indeterminate commits and replay") adds its deltas twice.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._errors import ConfigError, PermanentSinkError
from .._ident import validate
from ._newest import newer_or_equal
from ._sqlite_versions import affinity

__all__ = ["check_pg_types", "check_sqlite_types", "increment_columns", "sum_per_key"]

_PG_NUMERIC = ("smallint", "integer", "bigint", "numeric", "real", "double precision")
_PG_WHOLE = ("smallint", "integer", "bigint")
"""PostgreSQL types that hold whole numbers only."""
_SQLITE_NUMERIC = ("INTEGER", "REAL", "NUMERIC")


def increment_columns(
    increment: Iterable[str] | None, key: tuple[str, ...], version: str | None,
    report_stale: bool,
) -> tuple[str, ...]:  # fmt: skip
    """The validated ``increment=`` columns (``ConfigError`` naming the fix otherwise)."""
    if increment is None:
        return ()
    if isinstance(increment, str | bytes):
        raise ConfigError(
            f"increment: takes a tuple of column names, e.g. increment=({increment!r},); "
            f"got the string {increment!r}"
        )
    try:
        names = tuple(dict.fromkeys(validate(n, "increment") for n in increment))
    except TypeError:
        raise ConfigError(
            f"increment: takes a tuple of column names, e.g. increment=('views',); got "
            f"{increment!r}"
        ) from None
    if not names:
        return ()
    if not key:
        raise ConfigError(
            "increment: needs key (an increment adds to the row with the record's key; "
            "without a key records are appended)"
        )
    for name in names:
        if name in key:
            raise ConfigError(f"increment: {name!r} is a key column; increment only counters")
        if name == version:
            raise ConfigError(
                f"increment: {name!r} is the version column; increment only counters, not "
                f"the column that orders records"
            )
    if report_stale:
        raise ConfigError(
            "report_stale: cannot be combined with increment= (every record's increments "
            "apply, so none is stale); drop report_stale=True"
        )
    return names


def check_pg_types(
    increment: tuple[str, ...], catalog: Iterable[Sequence[Any]], where: str
) -> tuple[str, ...]:
    """Each increment column of the table (present: checked before) is numeric, or a
    domain over a numeric type. ``catalog``: the rows of ``_pg.COLUMNS_SQL`` (name, type,
    category, base type: for a domain, the type under it, however many domains deep).
    Returns the increment columns that hold whole numbers only (by their base type), whose
    deltas :func:`check_deltas` refuses unless whole."""
    types = {r[0]: (r[1], r[3]) for r in catalog}
    for name in increment:
        pg_type, base = types[name]
        if not base.startswith(_PG_NUMERIC) or base.endswith("]"):  # not an array
            shown = pg_type if base == pg_type else f"{pg_type} (a domain over {base})"
            raise ConfigError(
                f"increment: column {name!r} of {where} is {shown}, which cannot be added "
                f"to; make it {', '.join(_PG_NUMERIC)}, or leave it out of increment="
            )
    return tuple(n for n in increment if types[n][1].startswith(_PG_WHOLE))


def check_sqlite_types(increment: tuple[str, ...], declared: Mapping[str, str], table: str) -> None:
    """Each increment column of the table is declared with INTEGER, REAL or NUMERIC
    affinity (a TEXT or untyped column would keep what it is given as it is)."""
    for name in increment:
        kind = affinity(declared[name])
        if kind not in _SQLITE_NUMERIC:
            raise ConfigError(
                f"increment: column {name!r} of table {table!r} is declared "
                f"{declared[name]!r} ({kind} affinity); declare it INTEGER, REAL or NUMERIC, "
                f"or leave it out of increment="
            )


def check_deltas(
    names: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    increment: tuple[str, ...],
    whole: Iterable[str] = (),
) -> None:
    """Refuse a row whose delta for an increment column is not a number to add: a bool, a
    string or bytes (a driver or SQLite would turn it into a number, or into 0), a NaN or
    an infinity (every later sum would be NaN or infinite), or, for the columns in
    ``whole`` (integer columns), a number that is not whole (the driver would cut or round
    it). ``PermanentSinkError`` naming the column and the value: the batcher isolates the
    record and dead-letters it; the others are written."""
    cols = [(names.index(n), n) for n in increment if n in names]
    if not cols:
        return
    ints = frozenset(whole)
    for row in rows:
        for i, name in cols:
            v = row[i]
            if v is None or type(v) is int:
                continue
            bad = isinstance(v, bool | str | bytes) or not isinstance(
                v, int | float | decimal.Decimal
            )
            if not bad and isinstance(v, float | decimal.Decimal):
                bad = not math.isfinite(v) or (name in ints and v != int(v))
            if bad:
                raise PermanentSinkError(
                    f"increment column {name!r}: {v!r} ({type(v).__name__}) is not a number "
                    f"this column can add"
                    + (" (a whole number: the column is an integer)" if name in ints else "")
                    + "; give the record a number"
                )


def sum_per_key(
    names: tuple[str, ...], rows: list[tuple[Any, ...]], key: tuple[str, ...],
    version: str | None, increment: tuple[str, ...],
) -> list[tuple[Any, ...]]:  # fmt: skip
    """One row per key: the newest (the greatest version; a tie, or no version, the later
    one; a NULL version loses), with the increment columns summed over all the key's rows
    (None counts as 0; all None stays None). ``rows`` itself when no key repeats."""
    adds = [names.index(n) for n in increment if n in names]
    kidx = [names.index(k) for k in key]
    if not adds:
        return rows
    keys = [row[kidx[0]] if len(kidx) == 1 else tuple(row[i] for i in kidx) for row in rows]
    if len(set(keys)) == len(keys):
        return rows
    vidx = names.index(version) if version in names else None
    newest: dict[Any, tuple[Any, ...]] = {}
    sums: dict[Any, list[Any]] = {}
    for k, row in zip(keys, rows, strict=True):
        old = newest.get(k)
        if old is None:
            newest[k], sums[k] = row, [row[i] for i in adds]
            continue
        total = sums[k]
        for j, i in enumerate(adds):
            total[j] = _add(total[j], row[i], names[i])
        if vidx is None or newer_or_equal(row[vidx], old[vidx]):
            newest[k] = row
    out = []
    for k, row in newest.items():
        values = list(row)
        for j, i in enumerate(adds):
            values[i] = sums[k][j]
        out.append(tuple(values))
    return out


def _add(a: Any, b: Any, name: str) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    try:
        return a + b
    except TypeError as exc:
        raise PermanentSinkError(f"increment column {name!r}: cannot add {a!r} and {b!r}") from exc
