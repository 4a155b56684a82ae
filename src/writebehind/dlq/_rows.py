"""A dead-letter entry as the column values a store inserts, and its plainest form for an
entry the store refused as written.

Columns, in order: ``at`` (seconds, a float; each backend converts it), ``batcher``,
``sink``, ``error``, ``message``, ``attempts``, ``record`` (tagged JSON text), ``encoding``,
``record_type``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .._deadletter import DeadLetterEntry
from ._codec import encode, encode_repr, storable_text

__all__ = ["plain_row", "to_row"]

_MAX_ATTEMPTS = 2**31 - 1  # PostgreSQL's integer column


def to_row(entry: DeadLetterEntry) -> tuple[Any, ...]:
    """The column values for ``entry``: the record as tagged JSON, every text storable (NUL
    and lone surrogates escaped, see :func:`~._codec.storable_text`)."""
    text, encoding, name = encode(entry.record)
    return (
        float(entry.at),
        storable_text(str(entry.batcher)),
        storable_text(str(entry.sink)),
        storable_text(str(entry.error)),
        storable_text(str(entry.message)),
        int(entry.attempts),
        text,
        encoding,
        name,
    )


def plain_row(entry: DeadLetterEntry) -> tuple[Any, ...]:
    """``entry`` in a form every store takes, for one whose row it refused (or that could
    not be made): the record as its ASCII repr (kept, not replayable), every text ASCII,
    ``at`` finite and ``attempts`` within an integer column. Never raises."""
    text, encoding, name = encode_repr(entry.record, ascii_only=True)
    at = _number(entry.at)
    attempts = _number(entry.attempts)
    return (
        at if at is not None and math.isfinite(at) and at >= 0 else time.time(),
        _ascii(entry.batcher),
        _ascii(entry.sink),
        _ascii(entry.error),
        _ascii(entry.message),
        0
        if attempts is None or math.isnan(attempts)
        else int(max(0, min(attempts, _MAX_ATTEMPTS))),
        text,
        encoding,
        _ascii(name),
    )


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except Exception:
        return None


def _ascii(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return ascii(text)[1:-1] if not text.isascii() or "\x00" in text else text
