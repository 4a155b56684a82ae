"""The spool's errors, each under the library's one root::

WriteBehindError
├── BufferFull
│   └── SpoolFull        the spool holds max_bytes; the record was not appended
├── SpoolWriteError      a write or fsync failed (ENOSPC, EIO, ...): the records not yet
│                        synced are not durable; the log retries and resumes by itself
├── SpoolClosed          the log is closed (or its writer thread died)
└── SpoolForked          used from a forked child: the spool belongs to the parent
"""

from __future__ import annotations

import errno as errnos

from .._errors import BufferFull, RecordError, WriteBehindError

__all__ = ["SpoolClosed", "SpoolForked", "SpoolFull", "SpoolWriteError"]


class SpoolFull(BufferFull):
    """The spool holds ``max_bytes`` (records not yet trimmed); the record was not appended.

    ``SpoolLog.wait_for_room()`` waits until trimming frees space."""


class SpoolWriteError(WriteBehindError):
    """Writing or syncing the spool failed. Records appended but not yet synced are not
    durable; they stay queued and the log retries with backoff, so a later wait may succeed.

    ``errno`` is the OS error number when there is one (``errno.ENOSPC``, ``errno.EIO``)."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class SpoolClosed(WriteBehindError):
    """The spool log is closed (or its writer stopped) and takes no more records."""


class SpoolForked(WriteBehindError):
    """A spool log was used in a forked child process. The spool (its directory, lock and
    writer thread) belongs to the parent; the child must open no spool of its own on the same
    directory while the parent runs."""


def too_big(size: int, limit: int, where: str) -> RecordError:
    """A record that encodes to more than a segment holds."""
    return RecordError(
        f"{where}the record encodes to {size} bytes, more than the spool's segment_bytes "
        f"({limit}); raise segment_bytes (and max_bytes), or split the record"
    )


def full(used: int, max_bytes: int, size: int) -> SpoolFull:
    """No room for an append of ``size`` bytes."""
    return SpoolFull(
        f"the spool holds {used} bytes of max_bytes={max_bytes} and the record needs {size}: "
        f"wait for delivery to trim it (wait_for_room()), or raise max_bytes"
    )


def write_failed(exc: OSError) -> SpoolWriteError:
    """What waiters see after a failed write or fsync."""
    code = exc.errno
    name = errnos.errorcode.get(code, str(code)) if code is not None else "error"
    return SpoolWriteError(
        f"writing the spool failed ({name}: {exc.strerror or exc}); the records not yet "
        f"synced are not durable and stay queued: the spool retries, and they become "
        f"durable once the fault clears"
        + (" (free some disk space)" if code == errnos.ENOSPC else ""),
        errno=code,
    )
