"""``StoredEntry``: a dead letter as a store keeps it."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from ._codec import JSON, decode

__all__ = ["StoredEntry"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEntry:
    """A dead letter as a store keeps it: the :class:`~writebehind.DeadLetterEntry` fields,
    its ``id`` in the store, and the record as stored (tagged JSON text)."""

    id: int
    """The entry's id in its store (rising; ids are never reused)."""
    at: float
    """When it was dead-lettered (``time.time()`` seconds)."""
    batcher: str
    """The batcher's ``name``."""
    sink: str
    """The sink that refused it (its ``repr``)."""
    error: str
    """The error's class name."""
    message: str
    """The error's message, secrets scrubbed."""
    attempts: int
    """Writes tried before the record was condemned."""
    record_json: str
    """The record as stored: tagged JSON text (see :mod:`writebehind.dlq`)."""
    encoding: str
    """``"json"``, or ``"repr"`` when the record could not be encoded (not replayable)."""
    record_type: str
    """The record's type when it was added, e.g. ``dict`` or ``myapp.Heartbeat``."""

    @property
    def replayable(self) -> bool:
        """Whether :meth:`record` can rebuild the record (it was stored as JSON)."""
        return self.encoding == JSON

    def record(self) -> Any:
        """The record, decoded (objects come back as dicts of their fields).

        Raises :class:`~writebehind.dlq.RecordNotReplayable` if it was stored as its repr.
        """
        return decode(self.record_json, self.encoding)

    @property
    def at_datetime(self) -> dt.datetime:
        """:attr:`at` as an aware UTC ``datetime``."""
        return dt.datetime.fromtimestamp(self.at, dt.UTC)

    def to_dict(self) -> dict[str, Any]:
        """The entry as plain JSON-ready data; ``record`` is the stored tagged JSON value."""
        return {
            "id": self.id,
            "at": self.at_datetime.isoformat(),
            "batcher": self.batcher,
            "sink": self.sink,
            "error": self.error,
            "message": self.message,
            "attempts": self.attempts,
            "encoding": self.encoding,
            "record_type": self.record_type,
            "record": json.loads(self.record_json),
        }
