"""Classing SQLite's errors into writebehind's tree, by result code rather than message.

``sqlite3.Error.sqlite_errorcode`` (Python 3.11) carries SQLite's extended result code; its
low byte is the primary code. Errors no record can cause (a file that became read-only or
corrupt, a table or column dropped while running) are ``SinkMisconfigured``: the batcher
pauses and retries instead of splitting the batch to hunt for a bad record. A full disk, an
I/O error, a busy lock or a lack of memory may pass: ``RetriableSinkError``. Errors a record
causes (a constraint, a type mismatch, a value too big) are ``PermanentSinkError``.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from .._errors import PermanentSinkError, RetriableSinkError, SinkError, SinkMisconfigured
from ._values import bad_value

__all__ = ["SQLITE_BUSY", "binding_error", "error_code", "map_error", "statement_error"]

SQLITE_BUSY = 5
# SQLite's primary result codes (https://sqlite.org/rescode.html)
_RETRIABLE = {
    4,  # ABORT: a callback asked to abort
    5,  # BUSY: another connection holds the lock
    6,  # LOCKED: a conflict within this process
    7,  # NOMEM
    9,  # INTERRUPT
    10,  # IOERR: a read or write failed (the disk, the filesystem)
    13,  # FULL: the disk, or max_page_count
    14,  # CANTOPEN: the file, a journal or a temporary file
    15,  # PROTOCOL: a locking race
    17,  # SCHEMA: the schema changed under a statement
    22,  # NOLFS
}
_MISCONFIGURED = {
    3,  # PERM
    8,  # READONLY: the file or its directory is not writable any more
    11,  # CORRUPT
    23,  # AUTH
    26,  # NOTADB: the file is not a database (replaced?)
}
# SQLITE_ERROR (1) is generic; these say the schema no longer fits the sink.
_SCHEMA_GONE = (
    "no such table",
    "no such column",
    "has no column named",
    "on conflict clause does not match",
    "no such function",
    "no such collation",
)


def error_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code for ``exc``, or None for errors raised by Python's
    ``sqlite3`` module itself (a parameter it cannot bind, a closed connection)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def map_error(exc: sqlite3.Error) -> SinkError:
    """The ``SinkError`` for a ``sqlite3`` error, its message naming SQLite's code."""
    name = getattr(exc, "sqlite_errorname", None)
    message = f"{type(exc).__name__}: {exc}" + (f" ({name})" if name else "")
    code = error_code(exc)
    if code is None:
        if "closed database" in str(exc):
            return RetriableSinkError(message)
        return PermanentSinkError(message)  # a value of a type SQLite cannot bind, ...
    if code in _RETRIABLE:
        return RetriableSinkError(message)
    if code in _MISCONFIGURED:
        return SinkMisconfigured(message)
    if code == 1 and any(s in str(exc).lower() for s in _SCHEMA_GONE):
        return SinkMisconfigured(message)
    return PermanentSinkError(message)  # CONSTRAINT, MISMATCH, TOOBIG, RANGE, ERROR, ...


_BINDING = re.compile(r"Error binding parameter (\d+)\W*(.*)", re.DOTALL)


def binding_error(
    exc: sqlite3.Error, names: tuple[str, ...], rows: list[tuple[Any, ...]],
    key: tuple[str, ...],
) -> SinkError:  # fmt: skip
    """For a value ``sqlite3`` cannot bind ("Error binding parameter 3: type 'set' is not
    supported") in one statement of ``rows`` (their values bound in order, row after row:
    ``_sqlite_batch``): an error naming the column and the record's key."""
    m = _BINDING.search(str(exc))
    width = len(names)
    if m is None or not 0 <= int(m.group(1)) - 1 < width * len(rows):
        return map_error(exc)
    n = int(m.group(1)) - 1
    return bad_value(names[n % width], m.group(2), names, rows[n // width], key)


_INT64 = range(-(2**63), 2**63)


def unbound_value(
    exc: OverflowError | ValueError, names: tuple[str, ...], rows: list[tuple[Any, ...]],
    key: tuple[str, ...],
) -> SinkError:  # fmt: skip
    """For what ``sqlite3`` raises while binding without saying which parameter (an int
    beyond 64 bits: ``OverflowError``; a str holding a lone surrogate: ``UnicodeEncodeError``)
    in one statement of ``rows``: an error naming the first such value's column and its
    record's key."""
    for row in rows:
        for name, v in zip(names, row, strict=True):
            if isinstance(v, int) and v not in _INT64:
                detail = f"{v} is too large for SQLite's 64-bit INTEGER (-2**63 to 2**63 - 1)"
            elif isinstance(v, str) and not v.isascii() and not _encodes(v):
                detail = "a str that is not valid Unicode (a lone surrogate) cannot be stored"
            else:
                continue
            return bad_value(name, detail, names, row, key)
    return PermanentSinkError(f"{type(exc).__name__}: {exc}")


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def statement_error(
    exc: sqlite3.Error | OverflowError | ValueError, names: tuple[str, ...],
    rows: list[tuple[Any, ...]], key: tuple[str, ...], increment: tuple[str, ...],
) -> SinkError:  # fmt: skip
    """The ``SinkError`` for an upsert of ``rows`` that failed: a value that cannot be bound
    (:func:`binding_error`, :func:`unbound_value`); the "integer overflow" the checked sum
    raises (``_upsert``), naming the increment column(s); otherwise :func:`map_error`."""
    if not isinstance(exc, sqlite3.Error):
        return unbound_value(exc, names, rows, key)
    if isinstance(exc, sqlite3.ProgrammingError):
        return binding_error(exc, names, rows, key)
    adds = [n for n in increment if n in names]
    if adds and isinstance(exc, sqlite3.OperationalError) and "integer overflow" in str(exc):
        ints = [n for n in adds if any(type(r[names.index(n)]) is int for r in rows)]
        adds = ints or adds  # the overflow is in a column given an int
        columns = " or ".join(repr(n) for n in adds)
        return PermanentSinkError(
            f"increment column {columns}: the sum with the value in the table is beyond a "
            f"64-bit integer (SQLite would have rounded it to a REAL); nothing was written"
        )
    return map_error(exc)
