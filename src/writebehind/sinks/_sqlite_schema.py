"""What ``SQLiteSink`` reads of its table when it opens the file, and refuses at start."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from .._errors import ConfigError
from .._ident import quote
from ._increment import check_sqlite_types

__all__ = ["Table", "check_file", "inspect"]

_JSON_TYPES = ("JSON", "JSONB")


@dataclass(frozen=True)
class Table:
    """The table as the sink found it."""

    columns: tuple[str, ...]
    version_type: str
    """The version column's declared type ("" if none, or no version)."""
    json: frozenset[str] = frozenset()
    """Columns declared ``JSON`` or ``JSONB``: any value but a string is written as JSON."""


def inspect(
    conn: sqlite3.Connection, path: str, table: str, key: tuple[str, ...], version: str | None,
    increment: tuple[str, ...] = (),
) -> Table:  # fmt: skip
    """Read the table's columns; ``ConfigError`` if the table, a key, version or increment
    column, or a unique index that ``ON CONFLICT (key)`` can use is missing, or an increment
    column is not numeric."""
    info = conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
    if not info:
        raise ConfigError(f"table: {table!r} does not exist in {path!r}")
    columns = tuple(row[1] for row in info)
    for col in (*key, *((version,) if version else ()), *increment):
        if col not in columns:
            raise ConfigError(
                f"column {col!r} is not in table {table!r} (it has {', '.join(columns)})"
            )
    if key:
        _check_conflict_target(conn, table, key)
    check_sqlite_types(increment, {row[1]: row[2] or "" for row in info}, table)
    declared = next((row[2] or "" for row in info if row[1] == version), "")
    json = frozenset(row[1] for row in info if (row[2] or "").strip().upper() in _JSON_TYPES)
    return Table(columns, declared, json)


def _check_conflict_target(conn: sqlite3.Connection, table: str, key: tuple[str, ...]) -> None:
    """Let SQLite itself say whether ``ON CONFLICT (key)`` has an index to use: a partial
    index (``WHERE ...``) or one on an expression does not count, and a statement that
    names it fails for every record. ``EXPLAIN`` compiles the statement without running it."""
    cols = ", ".join(quote(k) for k in key)
    nulls = ", ".join("NULL" for _ in key)
    sql = (
        f"EXPLAIN INSERT INTO {quote(table)} ({cols}) VALUES ({nulls}) "
        f"ON CONFLICT ({cols}) DO NOTHING"
    )
    try:
        conn.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if "on conflict clause does not match" not in str(exc).lower():
            raise
        raise ConfigError(_no_index(conn, table, key)) from None


def _no_index(conn: sqlite3.Connection, table: str, key: tuple[str, ...]) -> str:
    cols = ", ".join(key)
    notes = []
    for row in conn.execute(f"PRAGMA index_list({quote(table)})").fetchall():
        name, unique, partial = row[1], row[2], row[4]
        if not unique:
            continue
        named = [c[2] for c in conn.execute(f"PRAGMA index_info({quote(name)})").fetchall()]
        if partial:
            notes.append(f"unique index {name!r} is partial (it has a WHERE clause)")
        elif None in named:
            notes.append(f"unique index {name!r} is on an expression")
    why = f"; {' and '.join(notes)}, which ON CONFLICT cannot use" if notes else ""
    return (
        f"key: table {table!r} has no PRIMARY KEY or UNIQUE index on ({cols}) that the upsert "
        f"can use{why}. Create one: CREATE UNIQUE INDEX {table}_key ON {table} ({cols})"
    )


def check_file(path: str, where: str, table: str) -> None:
    """``ConfigError`` unless ``where`` is an existing file: the table must exist, so a
    missing file is a mistyped path, and the sink creates nothing to find that out."""
    if os.path.isfile(where):
        return
    if os.path.isdir(where):
        raise ConfigError(f"path: {path!r} is a directory; give the database file's path")
    parent = os.path.dirname(where)
    why = (
        f"its directory {parent!r} does not exist either"
        if not os.path.isdir(parent)
        else "no file by that name"
    )
    raise ConfigError(
        f"path: the database file {path!r} does not exist ({why}); nothing was created. "
        f"Check the path, or create the file and table {table!r} first (the sink writes to "
        f"an existing table)"
    )
