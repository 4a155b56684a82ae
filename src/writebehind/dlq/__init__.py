"""Dead-letter stores: where records that can never be written are kept, and replayed from.

- :class:`SQLiteDeadLetter`: a local SQLite file, mode 0600.
- :class:`PostgresDeadLetter`: a table in PostgreSQL.

Both take what the engine hands them (``await store.put(entries)``, one transaction per
batch) and offer ``list``, ``get``, ``count``, ``delete``, ``purge``, ``replay`` and
``close``. Records are stored as tagged JSON, never pickle (see :mod:`._codec`); a record
that cannot be encoded is kept as its ``repr`` and refused on replay
(:class:`RecordNotReplayable`). One entry a store refuses never sinks the others of its
``put`` (see :meth:`DeadLetterStore.put`, :class:`EntriesNotStored`). ``writebehind dlq``
is the command line over them.
"""

from ._codec import RecordNotReplayable
from ._replay import ReplayReport, replay
from ._store import DeadLetterStore, EntriesNotStored, StoredEntry
from .postgres import PostgresDeadLetter
from .sqlite import SQLiteDeadLetter

__all__ = [
    "DeadLetterStore",
    "EntriesNotStored",
    "PostgresDeadLetter",
    "RecordNotReplayable",
    "ReplayReport",
    "SQLiteDeadLetter",
    "StoredEntry",
    "replay",
]
