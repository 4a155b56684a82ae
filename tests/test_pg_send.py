"""``_pg_send.send_rows``: the psycopg path's rows into a binary COPY, formatted in C-level
passes, make exactly the bytes ``write_row`` per row makes (signature, rows, trailer)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import _copy_base
from psycopg.adapt import Transformer
from psycopg.pq import Format

from writebehind.sinks import _pg_send

OIDS = [2950, 1184, 25, 20]  # uuid, timestamptz, text, int8
T0 = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)


def formatter() -> Any:
    tx = Transformer()
    tx.set_dumper_types(OIDS, Format.BINARY)
    return _copy_base.BinaryFormatter(tx)


class Sink:
    """What ``send_rows`` uses of an ``AsyncCopy``: ``formatter``, ``write``, ``write_row``."""

    def __init__(self) -> None:
        self.formatter = formatter()
        self.out = bytearray()

    async def write(self, data: Any) -> None:
        self.out += self.formatter.write(data)

    async def write_row(self, row: Any) -> None:
        self.out += self.formatter.write_row(row)

    def sent(self) -> bytes:
        return bytes(self.out + self.formatter.end())


def reference(rows: list[tuple[Any, ...]]) -> bytes:
    f = formatter()
    out = bytearray()
    for row in rows:
        out += f.write_row(row)
    return bytes(out + f.end())


def rows(n: int, note: str = "x") -> list[tuple[Any, ...]]:
    return [
        (uuid.UUID(int=i), T0 + dt.timedelta(microseconds=i), None if i % 3 else note, i)
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("n", "note"),
    [
        (0, ""),
        (1, ""),
        (_pg_send._CHUNK, ""),
        (_pg_send._CHUNK + 1, ""),
        (3000, ""),
        (40, "é" * 5000),
    ],
)
def test_the_bytes_are_write_rows(n: int, note: str) -> None:
    """Empty, one row, a chunk and one more, many buffers, rows larger than a buffer."""
    batch = rows(n, note)
    sink = Sink()
    asyncio.run(_pg_send.send_rows(sink, iter(batch)))
    assert sink.sent() == reference(batch)


def test_an_unknown_layout_takes_write_row() -> None:
    class OtherFormatter(_copy_base.BinaryFormatter):  # not the layout send_rows knows
        pass

    sink = Sink()
    sink.formatter = OtherFormatter(sink.formatter.transformer)
    batch = rows(10)
    asyncio.run(_pg_send.send_rows(sink, batch))
    assert sink.sent() == reference(batch)


def test_a_value_the_column_cannot_take_raises() -> None:
    sink = Sink()
    with pytest.raises((TypeError, psycopg.DataError, AttributeError)):
        asyncio.run(_pg_send.send_rows(sink, [*rows(300), ("not a uuid", T0, "x", 1)]))
