"""PostgreSQL helpers: SQLSTATE classification, DSN redaction, catalog queries.

Errors are mapped once, here. Retriable SQLSTATE classes: ``08`` connection exception,
``40`` transaction rollback (serialization failure, deadlock), ``53`` insufficient resources
(too many connections), ``55`` object not in prerequisite state (lock not available), ``57``
operator intervention (admin shutdown, query canceled), ``58`` system error. Everything else
(``22`` data exception, ``23`` integrity constraint violation, ``42`` undefined column, ...)
is permanent. A connection that drops mid-write, COMMIT included, is retriable and its
outcome unknown; the replay is safe because the upsert is idempotent.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._errors import PermanentSinkError, RetriableSinkError, SinkError

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


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (URL or key=value form)."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return "<unparsable DSN>"
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def password_of(dsn: str) -> str | None:
    """The password in a DSN, to scrub it from any text that might carry it."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return None
        if parts.password:
            return parts.password
        m = re.search(r"(?i)password=([^&]*)", parts.query)
        return m.group(1) if m else None
    m = re.search(r"(?i)password\s*=\s*('([^']*)'|\S+)", dsn)
    if not m:
        return None
    return m.group(2) if m.group(2) is not None else m.group(1)


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def map_error(exc: BaseException, secrets: tuple[str, ...]) -> SinkError:
    """Classify a driver error as retriable or permanent, with secrets scrubbed."""
    message = scrub(f"{type(exc).__name__}: {exc}", secrets)
    sqlstate: Any = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        message = f"{message} (SQLSTATE {sqlstate})"
        if sqlstate[:2] in RETRIABLE_CLASSES:
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
