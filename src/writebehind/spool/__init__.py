"""The durable spool: a segmented, checksummed, group-committed append-only log in a
directory, so that an accepted record survives ``kill -9`` and power loss.

- :class:`Spool`: the small frozen configuration (``Spool(path, max_bytes=..., fsync=...)``).
- :class:`SpoolLog`: the log itself (``SpoolLog.open(spool)``; ``append``, ``wait_durable``,
  ``done``, ``recovered``, ``stats``, ``close``).
- Errors: :class:`SpoolFull` (a ``BufferFull``), :class:`SpoolWriteError`,
  :class:`SpoolClosed`, :class:`SpoolForked`.

Modules: ``_frames`` (the frame format and the scanner), ``_codec`` (what a payload holds),
``_files`` (the file-system calls, replaceable for fault injection: see
``writebehind.spool.testing``), ``_dir`` (permissions, lock, fork), ``_segments`` (segment
names and bookkeeping), ``_recovery`` (open: scan, repair, tidy), ``_store`` (the files as
the writer changes them), ``_watermark`` (durability, across threads and loops), ``_stats``
and ``_log``.
"""

from __future__ import annotations

from ._config import Spool, SpoolSync
from ._errors import SpoolClosed, SpoolForked, SpoolFull, SpoolWriteError
from ._files import FileHandle, FileSystem, OsFileSystem
from ._log import SpoolLog
from ._recovery import SpoolDamage
from ._stats import SpoolStats
from ._watermark import DurableListener

__all__ = [
    "DurableListener",
    "FileHandle",
    "FileSystem",
    "OsFileSystem",
    "Spool",
    "SpoolClosed",
    "SpoolDamage",
    "SpoolForked",
    "SpoolFull",
    "SpoolLog",
    "SpoolStats",
    "SpoolSync",
    "SpoolWriteError",
]
