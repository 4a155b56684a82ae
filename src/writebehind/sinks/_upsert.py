"""The conflict clause both SQL sinks append to their INSERT: newest version wins; with
``increment=`` columns, those add and the version condition moves into the other columns
(``_increment``).

SQLite turns a sum of two integers that overflows 64 bits into a REAL (rounded, silently),
where PostgreSQL raises "bigint out of range"; with ``checked=True`` (the SQLite sink) such
a sum raises SQLite's "integer overflow" instead (``abs`` of the smallest integer, the one
error an expression can raise), which the sink reports naming the column
(``_sqlite_errors.statement_error``)."""

from __future__ import annotations

from .._ident import quote

__all__ = ["on_conflict"]


def on_conflict(
    names: tuple[str, ...], key: tuple[str, ...], version: str | None, existing: str,
    increment: tuple[str, ...] = (), *, checked: bool = False,
) -> str:  # fmt: skip
    """``ON CONFLICT (key) DO UPDATE SET ... WHERE <newer or equal version>``.

    ``existing`` names the row already in the table (the table, or its alias). Without a
    version the later write wins; with nothing but key columns, the conflict does nothing.
    An equal version overwrites, so a replay writes identical data.

    Columns in ``increment`` add (``COALESCE(t.c, 0) + COALESCE(excluded.c, 0)``) whatever
    the versions; when the record has one, the others take the record's value only if its
    version is newer or equal (a ``CASE`` per column instead of the ``WHERE``). ``checked``:
    a sum of two integers past 64 bits raises instead of becoming a REAL (SQLite).
    """
    conflict = ", ".join(quote(k) for k in key)
    updates = [n for n in names if n not in key]
    if not updates:
        return f" ON CONFLICT ({conflict}) DO NOTHING"
    newer = None
    if version is not None and version in names:
        v = quote(version)
        newer = f"{existing}.{v} IS NULL OR excluded.{v} >= {existing}.{v}"
    if not any(n in increment for n in updates):
        sets = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in updates)
        clause = f" ON CONFLICT ({conflict}) DO UPDATE SET {sets}"
        return clause + (f" WHERE {newer}" if newer else "")
    parts = []
    for n in updates:
        q = quote(n)
        if n in increment:
            parts.append(f"{q} = {_add(f'{existing}.{q}', f'excluded.{q}', checked)}")
        elif newer:
            parts.append(f"{q} = CASE WHEN {newer} THEN excluded.{q} ELSE {existing}.{q} END")
        else:
            parts.append(f"{q} = excluded.{q}")
    return f" ON CONFLICT ({conflict}) DO UPDATE SET {', '.join(parts)}"


def _add(old: str, new: str, checked: bool) -> str:
    total = f"COALESCE({old}, 0) + COALESCE({new}, 0)"
    if not checked:
        return total
    # Both integers and the sum not: it overflowed. The error's argument depends on the row
    # so that SQLite never evaluates it ahead of the CASE as a constant.
    return (
        f"CASE WHEN typeof({old}) = 'integer' AND typeof({new}) = 'integer' "
        f"AND typeof({total}) <> 'integer' "
        f"THEN abs({new} * 0 - 9223372036854775807 - 1) ELSE {total} END"
    )
