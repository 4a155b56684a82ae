"""The psycopg path's rows for the usual batch, read from the records as COPY sends them.

A batch whose records share one shape (:func:`~._records.one_shape`) and hold no value to
convert (no ``Enum`` member, no JSON column, no ISO string for a timestamp, date or uuid
column: :func:`~._values.conversions`) is not turned into a list of row tuples: each row is
read (``operator.itemgetter``/``attrgetter``, in C) when COPY formats it and dropped right
after. A list of 5,000 tuples per batch, alive across the write's round trips, is what the
garbage collector scans again and again while the batcher allocates: on the heartbeat
workload (benchmarks/postgres_copy.py; 40 writes of 5,000 through ``write()``) the sink's
client CPU went from 0.16 to 0.135 seconds per 100,000 rows without it (0.12 with the
collector off; a hand-written COPY loop costs 0.11).

One pass over each column's values decides, as ``convert_rows`` would, that nothing is
converted (and that every dict has the first one's keys); anything else takes the general
path (``group_indexed`` and ``convert_rows``), so the rows written are the same either way.
The records are read again by COPY, within the same ``write()``: a record changed by its
producer while its batch is being written was never safe to change.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

from ._records import one_shape
from ._values import conversions

__all__ = ["StreamedRows", "stream_rows"]

Fn = Callable[[Any], Any]


class StreamedRows(Sequence[tuple[Any, ...]]):
    """The rows of ``batch`` (``get`` of each record), read anew on each iteration."""

    __slots__ = ("batch", "get")

    def __init__(self, batch: list[Any], get: Callable[[Any], tuple[Any, ...]]) -> None:
        self.batch, self.get = batch, get

    def __len__(self) -> int:
        return len(self.batch)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return map(self.get, self.batch)

    @overload
    def __getitem__(self, i: int) -> tuple[Any, ...]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[Any, ...]]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return list(map(self.get, self.batch[i]))
        return self.get(self.batch[i])


def stream_rows(
    batch: list[Any],
    by_type: Callable[[type], Fn | None],
    by_column: Mapping[str, Fn],
) -> tuple[tuple[str, ...], StreamedRows] | None:
    """``batch`` as one group of streamed rows, or None when it needs the general path
    (several shapes, or a value that ``convert_rows`` would convert)."""
    shape = one_shape(batch)
    if shape is None:
        return None
    names, get, mapping = shape
    field = operator.itemgetter if mapping else operator.attrgetter
    for name in names:  # each column's value types, as convert_rows decides per column
        try:  # a dict with other keys raises here
            types = set(map(type, map(field(name), batch)))
        except (KeyError, AttributeError):
            return None
        found, wanted = conversions((name,), types, by_type, by_column)
        if found or wanted:
            return None
    return names, StreamedRows(batch, get)
