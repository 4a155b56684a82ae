"""Helpers shared by the spool tests: open a log on a directory, a record factory."""

from __future__ import annotations

import os
from typing import Any

from writebehind.spool import FileSystem, Spool, SpoolLog


def spool_at(path: str | os.PathLike[str], **options: Any) -> Spool:
    """A small spool (4 KiB segments unless told) so that tests rotate and trim often."""
    options.setdefault("max_bytes", 1 << 20)
    options.setdefault("segment_bytes", 4096)
    return Spool(os.path.join(os.fspath(path), "spool"), **options)


def open_log(
    path: str | os.PathLike[str], fs: FileSystem | None = None, **options: Any
) -> SpoolLog:
    return SpoolLog.open(spool_at(path, **options), fs=fs)


def rec(i: int) -> dict[str, Any]:
    """Record ``i``: small, unique, recognisable."""
    return {"id": i, "v": f"value-{i}", "pad": "x" * (i % 7)}
