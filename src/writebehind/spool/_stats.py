"""``SpoolStats``: a snapshot of a spool log's figures."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SpoolStats"]


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """A snapshot of a spool log.

    ``bytes``: on disk (segments and done files; ``damaged/`` not counted) plus what is
    queued; ``spooled``: records appended or recovered and not yet done; ``oldest_age``:
    seconds since the oldest of those was appended (None when there is none); ``queued``:
    appended, not yet durable; ``fsyncs``: file and directory syncs so far; ``write_errors``:
    failed attempts to write or sync so far, ``last_error`` the latest one's message."""

    bytes: int
    max_bytes: int
    spooled: int
    oldest_age: float | None
    segments: int
    fsyncs: int
    appended: int
    durable_seq: int
    queued: int
    write_errors: int
    last_error: str | None
    recovered: int
    damaged_frames: int
    damaged_bytes: int
