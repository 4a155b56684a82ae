"""What one :func:`writebehind.consume_stream` call did (``streams.py``), returned when
its batcher closed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StreamReport"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReport:
    """What one :func:`consume_stream` call did, returned when the batcher closed."""

    read: int
    """Entries delivered to this consumer: read new, read again from its own pending list at
    start, or claimed."""
    claimed: int
    """Entries claimed from other consumers (``XAUTOCLAIM``), included in ``read``."""
    added: int
    """Records added to the batcher."""
    acked: int
    """Entries acknowledged (and deleted, with ``delete=True``)."""
    dead_lettered: int
    """Entries that could not be decoded, or whose record the batcher refused
    (``RecordError``): dead-lettered as they were and acknowledged."""
    left_pending: int
    """Entries left pending for another consumer: their records were lost or spooled at
    the batcher's close deadline, or the batcher closed before they were added."""
