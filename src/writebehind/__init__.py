"""writebehind: batch the many small writes a service makes into a datastore.

``add()`` returns in about a microsecond; records with the same key coalesce (the newest
version wins); batches are written with one statement each, on size, linger, ``flush()``
and close; nothing accepted is lost without a counter, an outcome and a log line.
"""

from ._clock import Clock, MonotonicClock
from ._deadletter import CallableDeadLetter, DeadLetter, DeadLetterEntry
from ._engine import AsyncBatcher
from ._errors import (
    BatcherClosed,
    BufferFull,
    ConfigError,
    PermanentSinkError,
    RecordError,
    RetriableSinkError,
    SinkError,
    WriteBehindError,
    WriteTimeout,
)
from ._events import (
    BatchCommitted,
    BatchFailed,
    BufferFilled,
    Closed,
    Event,
    Paused,
    RecordsDeadLettered,
    RecordsDropped,
    Resumed,
    RetryScheduled,
    SubscriberLagged,
    Subscription,
)
from ._instrument import Instrument, WriteAttempt
from ._receipt import Outcome, Receipt
from ._retry import RetryPolicy
from ._stats import CloseReport, Stats
from ._sync import Batcher
from .dlq import (
    PostgresDeadLetter,
    RecordNotReplayable,
    ReplayReport,
    SQLiteDeadLetter,
    StoredEntry,
)
from .sinks import CallableSink, PostgresSink, Sink, SQLiteSink

__version__ = "0.1.0"

__all__ = [
    "StoredEntry",
    "SQLiteDeadLetter",
    "ReplayReport",
    "RecordNotReplayable",
    "PostgresDeadLetter",
    "AsyncBatcher",
    "BatchCommitted",
    "BatchFailed",
    "Batcher",
    "BatcherClosed",
    "BufferFilled",
    "BufferFull",
    "CallableDeadLetter",
    "CallableSink",
    "Clock",
    "CloseReport",
    "Closed",
    "ConfigError",
    "DeadLetter",
    "DeadLetterEntry",
    "Event",
    "Instrument",
    "MonotonicClock",
    "Outcome",
    "Paused",
    "PermanentSinkError",
    "PostgresSink",
    "RecordsDeadLettered",
    "RecordsDropped",
    "Receipt",
    "RecordError",
    "Resumed",
    "RetriableSinkError",
    "RetryPolicy",
    "RetryScheduled",
    "SQLiteSink",
    "Sink",
    "SinkError",
    "Stats",
    "SubscriberLagged",
    "Subscription",
    "WriteAttempt",
    "WriteBehindError",
    "WriteTimeout",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("writebehind."):
        _obj.__module__ = "writebehind"
del _name, _obj
