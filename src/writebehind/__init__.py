"""writebehind: batch the many small writes a service makes into a datastore.

``add()`` returns in about a microsecond; records with the same key coalesce (the newest
version wins); batches are written with one statement each, on size, linger, ``flush()``
and close; nothing accepted is lost without a counter, an outcome and a log line.
"""

from . import merge as merge  # writebehind.merge: the ready-made merge= functions
from ._capacity import Capacity, ProvisionedCapacity
from ._clock import Clock, MonotonicClock
from ._config import BatcherOptions, Options
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
    SinkMisconfigured,
    WriteBehindError,
    WriteTimeout,
)
from ._events import (
    BatchCommitted,
    BatchFailed,
    BufferFilled,
    CapacityChanged,
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
from ._receipt import Batch, Outcome, Receipt
from ._receipt_group import Receipts
from ._retry import RetryPolicy
from ._stats import CloseReport, Stats
from ._sync import Batcher
from .dlq import (
    EntriesNotStored,
    PostgresDeadLetter,
    RecordNotReplayable,
    ReplayReport,
    SQLiteDeadLetter,
    StoredEntry,
)
from .scale import RedisSharedCapacity, StreamReport, consume_stream
from .sinks import (
    CallableSink,
    PostgresSink,
    RedisSink,
    RedisStreamSink,
    Sink,
    SQLiteSink,
    WriteResult,
)
from .spool import Spool, SpoolFull

__version__ = "0.1.0"

__all__ = [
    "AsyncBatcher",
    "Batch",
    "BatchCommitted",
    "BatchFailed",
    "Batcher",
    "BatcherClosed",
    "BatcherOptions",
    "BufferFilled",
    "BufferFull",
    "CallableDeadLetter",
    "CallableSink",
    "Capacity",
    "CapacityChanged",
    "Clock",
    "CloseReport",
    "Closed",
    "ConfigError",
    "DeadLetter",
    "DeadLetterEntry",
    "EntriesNotStored",
    "Event",
    "Instrument",
    "MonotonicClock",
    "Options",
    "Outcome",
    "Paused",
    "PermanentSinkError",
    "PostgresDeadLetter",
    "PostgresSink",
    "ProvisionedCapacity",
    "Receipt",
    "Receipts",
    "RecordError",
    "RecordNotReplayable",
    "RecordsDeadLettered",
    "RecordsDropped",
    "RedisSharedCapacity",
    "RedisSink",
    "RedisStreamSink",
    "ReplayReport",
    "Resumed",
    "RetriableSinkError",
    "RetryPolicy",
    "RetryScheduled",
    "SQLiteDeadLetter",
    "SQLiteSink",
    "Sink",
    "SinkError",
    "SinkMisconfigured",
    "Spool",
    "SpoolFull",
    "Stats",
    "StoredEntry",
    "StreamReport",
    "SubscriberLagged",
    "Subscription",
    "WriteAttempt",
    "WriteBehindError",
    "WriteResult",
    "WriteTimeout",
    "consume_stream",
]


def _show_as_public() -> None:
    """Reprs and docs say ``writebehind.X``. Annotations are resolved first, in the module
    that wrote them, so ``typing.get_type_hints()`` keeps working on the public classes."""
    import inspect
    import sys
    import typing

    # names some modules import only for type checking (to avoid a cycle) live elsewhere
    # in the package: resolve against every loaded module of it
    everything: dict[str, object] = {}
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("writebehind.") and mod is not None:
            everything.update(
                {k: v for k, v in vars(mod).items() if isinstance(v, type) or k[:1].isupper()}
            )
    for name in __all__:
        obj = globals()[name]
        if not getattr(obj, "__module__", "").startswith("writebehind."):
            continue
        if isinstance(obj, type):
            own = inspect.get_annotations(obj)
            if own:
                try:
                    hints = typing.get_type_hints(obj, localns=everything)
                except NameError as exc:
                    raise NameError(f"{name}: {exc}") from exc
                obj.__annotations__ = {k: hints.get(k, v) for k, v in own.items()}
        obj.__module__ = "writebehind"


_show_as_public()
del _show_as_public
