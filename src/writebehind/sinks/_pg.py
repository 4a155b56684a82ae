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

from collections.abc import Sequence
from typing import Any

from .._errors import PermanentSinkError, RetriableSinkError, SinkError, SinkMisconfigured
from .._redact import describe, password_of, redact_dsn, scrub  # redact_dsn: benchmarks use it

__all__ = [
    "COLUMNS_SQL",
    "UNIQUE_SQL",
    "is_client_error",
    "map_error",
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

COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory::text
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

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


def is_client_error(exc: BaseException) -> bool:
    """An asyncpg error raised by the client (no SQLSTATE): the connection is suspect."""
    return type(exc).__module__.startswith("asyncpg") and not getattr(exc, "sqlstate", None)
