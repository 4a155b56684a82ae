"""``Spool``: where the durable log lives and how it syncs, validated and frozen."""

from __future__ import annotations

import os
from dataclasses import KW_ONLY, dataclass
from typing import Literal

from .._errors import ConfigError

__all__ = ["FSYNC", "Spool", "SpoolSync"]

SpoolSync = Literal["batch", "never"]
FSYNC: tuple[SpoolSync, ...] = ("batch", "never")

_MIB = 1024 * 1024
_MIN_SEGMENT = 4096


@dataclass(frozen=True, slots=True)
class Spool:
    """A durable spool directory (``spool=`` on a batcher takes this or a plain path).

    - ``path``: the directory; created 0700 (files 0600) if missing. It must belong to this
      user and not be writable by group or others.
    - ``max_bytes``: bytes on disk at most (segments not yet trimmed, done marks); an append
      beyond it raises ``SpoolFull`` (default 1 GiB).
    - ``fsync``: ``"batch"`` (default): group commit, one fsync shared by every append waiting
      at that moment; a record is durable once its fsync returned. ``"never"``: written to the
      OS but never fsynced, so it survives ``kill -9`` but *not* a power loss or an OS crash:
      for tests and benchmarks only.
    - ``segment_bytes``: a segment file is closed and a new one started past this size; a
      segment is deleted once every record in it is done (default ``min(16 MiB,
      max_bytes // 4)``).
    """

    path: str | os.PathLike[str]
    _: KW_ONLY
    max_bytes: int = 1024 * _MIB
    fsync: SpoolSync = "batch"
    segment_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str | os.PathLike) or not os.fspath(self.path):
            raise ConfigError(
                f"path: must be a directory path (a non-empty str or os.PathLike), "
                f"got {self.path!r}"
            )
        _int("max_bytes", self.max_bytes, 4 * _MIN_SEGMENT)
        if self.fsync not in FSYNC:
            raise ConfigError(
                f"fsync: must be one of {', '.join(repr(f) for f in FSYNC)}, got {self.fsync!r}"
            )
        if self.segment_bytes is None:
            object.__setattr__(self, "segment_bytes", min(16 * _MIB, self.max_bytes // 4))
        _int("segment_bytes", self.segment_bytes, _MIN_SEGMENT)
        if self.segment_size * 4 > self.max_bytes:
            raise ConfigError(
                f"segment_bytes: must be at most max_bytes / 4 ({self.max_bytes // 4}) so that "
                f"trimming done segments can always make room, got {self.segment_bytes}; "
                f"lower segment_bytes or raise max_bytes"
            )

    @property
    def segment_size(self) -> int:
        """``segment_bytes`` with its default applied."""
        assert self.segment_bytes is not None  # set in __post_init__
        return self.segment_bytes

    @classmethod
    def of(cls, spec: Spool | str | os.PathLike[str]) -> Spool:
        """``spec`` if it is a ``Spool``, else a ``Spool`` with the defaults at that path."""
        return spec if isinstance(spec, Spool) else cls(spec)


def _int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum} (bytes), got {value!r}")
