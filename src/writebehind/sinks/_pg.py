"""PostgreSQL helpers: SQLSTATE classification and catalog queries (DSN redaction lives in
:mod:`writebehind._redact`).

Errors are mapped once, here. Retriable SQLSTATE classes: ``08`` connection exception,
``40`` transaction rollback (serialization failure, deadlock), ``53`` insufficient resources
(too many connections), ``55`` object not in prerequisite state (lock not available), ``57``
operator intervention (admin shutdown, query canceled), ``58`` system error.

Errors no record can cause, because the sink's SQL is built from the table as it was at
start, are :class:`~writebehind.SinkMisconfigured` (retriable: the batcher pauses as failing
and probes once per backoff step, instead of splitting every batch into dead letters):
``42P01`` undefined table, ``42703`` undefined column, ``42804`` datatype mismatch (a column
retyped), ``42883`` undefined function (an operator a retyped column lacks), ``42501``
insufficient privilege, ``3F000`` invalid schema name, ``42P10`` no unique index matching the
``ON CONFLICT`` (it was dropped). asyncpg's ``InvalidCachedStatementError`` (after an
``ALTER``) is retriable: the next attempt prepares afresh.

Everything else (``22`` data exception, ``23`` integrity constraint violation, ...) is
permanent: the record's fault. A connection that drops mid-write, COMMIT included, is
retriable and its outcome unknown; the replay is safe because the upsert is idempotent.
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Sequence
from typing import Any

from .._errors import PermanentSinkError, RetriableSinkError, SinkError, SinkMisconfigured
from .._redact import describe, password_of, redact_dsn, scrub  # redact_dsn: benchmarks use it
from ._newest import newer_or_equal
from ._values import bad_value

__all__ = [
    "COLUMNS_SQL",
    "TYPES_SQL",
    "UNIQUE_SQL",
    "argument_error",
    "is_client_error",
    "map_error",
    "newest_per_key",
    "password_of",
    "redact_dsn",
    "scrub",
]

RETRIABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
MISCONFIGURED = frozenset({"42P01", "42703", "42804", "42883", "42501", "3F000", "42P10"})
"""SQLSTATEs no record can cause: the table, a column, a privilege changed under the sink."""
_MISCONFIGURED_HINT = (
    "; no record can cause this: the table, a column or a privilege changed under the sink "
    "(a configuration problem), so writes pause and are retried with backoff until it is "
    "repaired"
)

_BASE_TYPE = """(
  WITH RECURSIVE d(oid, mod) AS (
    SELECT a.atttypid, a.atttypmod
    UNION ALL
    SELECT b.typbasetype, b.typtypmod FROM d JOIN pg_type b ON b.oid = d.oid AND b.typtype = 'd'
  ) SELECT format_type(d.oid, d.mod) FROM d JOIN pg_type x ON x.oid = d.oid AND x.typtype <> 'd'
)"""
"""The column's base type: for a domain, the type under it (a domain over a domain too,
``typbasetype`` naming one level only); for any other column its own type."""

COLUMNS_SQL = f"""
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory::text, {_BASE_TYPE}
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
"""The table's columns for the asyncpg path: name, type, category and base type."""

TYPES_SQL = f"""
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory::text, {_BASE_TYPE},
       a.atttypid::int, t.typtype::text, t.typbasetype::int, t.typelem::int
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
"""The same for the psycopg path, with the oids its binary COPY needs."""

UNIQUE_SQL = """
SELECT array_agg(a.attname::text ORDER BY a.attname)
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
GROUP BY i.indexrelid
"""


def map_error(
    exc: BaseException, secrets: Sequence[str] = (), *, withhold: bool = False
) -> SinkError:
    """Classify a driver error as retriable or permanent, with secrets scrubbed (and the
    driver's message withheld with ``withhold``, see :func:`writebehind._redact.describe`)."""
    message = describe(exc, secrets, withhold=withhold)
    sqlstate: Any = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        message = f"{message} (SQLSTATE {sqlstate})"
        if sqlstate in MISCONFIGURED:
            return SinkMisconfigured(message + _MISCONFIGURED_HINT)
        if sqlstate[:2] in RETRIABLE_CLASSES or type(exc).__name__ == "InvalidCachedStatementError":
            return RetriableSinkError(message)
        return PermanentSinkError(message)
    if isinstance(exc, ValueError | TypeError):
        return PermanentSinkError(message)  # a value the driver cannot encode for its column
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return RetriableSinkError(message)
    if is_client_error(exc) and type(exc).__name__ != "ClientConfigurationError":
        # the connection closed under us, or was left mid-operation: a fresh one may work
        return RetriableSinkError(message)
    return PermanentSinkError(message)


# asyncpg's client-side DataError for a value it cannot encode: "invalid input for query
# argument $3: [...the whole array...] (invalid array element at index 1: expected str, got int)"
_ARGUMENT = re.compile(
    r"invalid input for query argument \$(\d+): .*\((?:invalid array element"
    r"(?: at index (\d+))?: )?(.*)\)\s*$",
    re.DOTALL,
)


def argument_error(
    exc: BaseException, names: tuple[str, ...], rows: list[tuple[Any, ...]],
    key: tuple[str, ...],
) -> PermanentSinkError | None:  # fmt: skip
    """For asyncpg's error about an array argument of the unnest statement (argument ``$n``
    is column ``names[n-1]``, element ``i`` is ``rows[i]``): an error naming the column and
    the record's key instead of the argument number and the whole array. None for others."""
    m = _ARGUMENT.search(str(exc)) if type(exc).__name__ == "DataError" else None
    if m is None or not 1 <= int(m.group(1)) <= len(names):
        return None
    index = int(m.group(2)) if m.group(2) is not None else (0 if len(rows) == 1 else None)
    row = rows[index] if index is not None and index < len(rows) else None
    return bad_value(names[int(m.group(1)) - 1], m.group(3), names, row, key)


_PSYCOPG_CLIENT = frozenset({"OperationalError", "InterfaceError"})


def is_client_error(exc: BaseException) -> bool:
    """An error raised by the client (no SQLSTATE): the connection is suspect. For asyncpg
    any of its errors; for psycopg (and psycopg_pool) an ``OperationalError`` (the
    connection failed or closed, a pool timed out) or ``InterfaceError``."""
    if getattr(exc, "sqlstate", None):
        return False
    module = type(exc).__module__
    if module.startswith("asyncpg"):
        return True
    return module.startswith("psycopg") and any(
        c.__name__ in _PSYCOPG_CLIENT for c in type(exc).__mro__
    )


def newest_per_key(
    names: tuple[str, ...], rows: list[tuple[Any, ...]], key: tuple[str, ...],
    version: str | None,
) -> list[tuple[Any, ...]]:  # fmt: skip
    """The asyncpg path's rows with the newest row per key kept (a tie goes to the later
    one): PostgreSQL refuses to update one row twice in a statement. (The psycopg path
    does the same in SQL, with ``DISTINCT ON``.)"""
    kidx = [names.index(k) for k in key]
    if len(kidx) == 1 and _distinct(rows, kidx[0]):
        return rows  # the usual batch (the batcher's are one record per key)
    vidx = names.index(version) if version in names else None
    newest: dict[Any, tuple[Any, ...]] = {}
    for row in rows:
        k = row[kidx[0]] if len(kidx) == 1 else tuple(row[i] for i in kidx)
        old = newest.get(k)
        if old is None or vidx is None or newer_or_equal(row[vidx], old[vidx]):
            newest[k] = row
    return rows if len(newest) == len(rows) else list(newest.values())


_UUID_INT = operator.attrgetter("int")
_HASHED_IN_C = ({str}, {int}, {bytes})


def _distinct(rows: list[tuple[Any, ...]], i: int) -> bool:
    """Whether no two rows hold the same value in column ``i``, when C-level passes tell:
    all ``uuid.UUID`` (compared by their ``int``, as ``UUID`` compares them; its ``__hash__``
    is Python), or all ``str``, ``int`` or ``bytes``. False when it cannot tell."""
    column = list(map(operator.itemgetter(i), rows))
    types = set(map(type, column))
    if types == {uuid.UUID}:
        return len(set(map(_UUID_INT, column))) == len(column)
    return types in _HASHED_IN_C and len(set(column)) == len(column)
