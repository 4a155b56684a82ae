"""The conflict clause both SQL sinks append to their INSERT: newest version wins."""

from __future__ import annotations

from .._ident import quote

__all__ = ["on_conflict"]


def on_conflict(
    names: tuple[str, ...], key: tuple[str, ...], version: str | None, existing: str
) -> str:
    """``ON CONFLICT (key) DO UPDATE SET ... WHERE <newer or equal version>``.

    ``existing`` names the row already in the table (the table, or its alias). Without a
    version the later write wins; with nothing but key columns, the conflict does nothing.
    An equal version overwrites, so a replay writes identical data.
    """
    conflict = ", ".join(quote(k) for k in key)
    updates = [n for n in names if n not in key]
    if not updates:
        return f" ON CONFLICT ({conflict}) DO NOTHING"
    sets = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in updates)
    clause = f" ON CONFLICT ({conflict}) DO UPDATE SET {sets}"
    if version is not None and version in names:
        v = quote(version)
        clause += f" WHERE {existing}.{v} IS NULL OR excluded.{v} >= {existing}.{v}"
    return clause
