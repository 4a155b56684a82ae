"""The psycopg path's streamed rows (``_pg_stream``): a batch of one shape with nothing to
convert is COPYed straight from its records; anything else takes the general path, and the
rows written are the same either way."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from typing import Any

import asyncpg
import pytest

import writebehind as wb
from writebehind.sinks._pg_stream import StreamedRows, stream_rows
from writebehind.sinks._values import enum_values

from .pg import DSN

pytestmark = pytest.mark.server

T0 = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)
BIG = 200  # above COPY_MIN: COPY + merge


class Note(enum.Enum):
    UP = "up"


@dataclasses.dataclass
class Beat:
    id: uuid.UUID
    updated_at: dt.datetime
    note: str


def beat(agent: uuid.UUID, second: int, note: str = "") -> dict[str, Any]:
    return {"id": agent, "updated_at": T0 + dt.timedelta(seconds=second), "note": note}


def sink_for(table: str, **kw: Any) -> wb.PostgresSink:
    return wb.PostgresSink(DSN, table=table, key="id", version="updated_at", driver="psycopg", **kw)


async def stored(pg: asyncpg.Connection, table: str) -> dict[uuid.UUID, tuple[Any, ...]]:
    got = await pg.fetch(f"SELECT id, updated_at, note, first_connected_at FROM {table}")
    return {r["id"]: tuple(r)[1:] for r in got}


def test_which_batches_are_streamed() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    plain = [beat(i, 1) for i in ids]
    one = stream_rows(plain, enum_values, {})
    assert one is not None
    names, rows = one
    assert names == ("id", "updated_at", "note")
    assert isinstance(rows, StreamedRows)
    assert len(rows) == 3
    assert list(rows) == [tuple(r.values()) for r in plain]
    assert rows[1] == tuple(plain[1].values())
    assert rows[1:] == list(rows)[1:]
    beats = [Beat(i, T0, "x") for i in ids]
    assert stream_rows(beats, enum_values, {}) is not None
    # a value to convert, other keys of the same count, one key, two classes: general path
    assert stream_rows([*plain, beat(ids[0], 2, Note.UP)], enum_values, {}) is None  # type: ignore[arg-type]
    other = {"id": ids[0], "updated_at": T0, "first_connected_at": T0}
    assert stream_rows([*plain, other], enum_values, {}) is None
    assert stream_rows([{"id": i} for i in ids], enum_values, {}) is None
    assert stream_rows([*beats, plain[0]], enum_values, {}) is None
    # an ISO-string parser matters only in a column holding a str; a JSON column always
    iso: dict[str, Any] = {"updated_at": lambda v: v}
    iso["updated_at"].strings_only = True
    assert stream_rows(plain, enum_values, iso) is not None  # the str values are notes
    at_iso = beat(ids[0], 2) | {"updated_at": T0.isoformat()}
    assert stream_rows([*plain, at_iso], enum_values, iso) is None
    assert stream_rows(plain, enum_values, {"note": lambda v: v}) is None


async def test_general_path_batches_write_the_same_rows(pg: asyncpg.Connection, table: str) -> None:
    """Dicts with other keys of the same count, an Enum member and ISO strings: written as
    the streamed rows would be (each record with its own keys, values converted)."""
    ids = [uuid.uuid4() for _ in range(BIG)]
    batch: list[Any] = [beat(i, 5, "s") for i in ids]
    batch[7] = {"id": ids[7], "updated_at": T0, "first_connected_at": T0}  # 3 keys, not note
    batch[9] = beat(ids[9], 5, Note.UP)  # type: ignore[arg-type]
    batch[11] = {"id": str(ids[11]), "updated_at": T0.isoformat(), "note": "iso"}
    sink = sink_for(table)
    await sink.start()
    try:
        await sink.write(batch)
        await sink.write([Beat(i, T0 + dt.timedelta(seconds=9), "dc") for i in ids[100:]])
    finally:
        await sink.close()
    got = await stored(pg, table)
    assert len(got) == BIG
    assert got[ids[0]] == (T0 + dt.timedelta(seconds=5), "s", None)
    assert got[ids[7]] == (T0, None, T0)
    assert got[ids[9]][1] == "up"
    assert got[ids[11]] == (T0, "iso", None)
    assert got[ids[150]] == (T0 + dt.timedelta(seconds=9), "dc", None)


async def test_streamed_rows_report_stale_and_keep_the_newest(
    pg: asyncpg.Connection, table: str
) -> None:
    ids = [uuid.uuid4() for _ in range(BIG)]
    sink = sink_for(table, report_stale=True)
    await sink.start()
    try:
        assert await sink.write([beat(i, 10, "new") for i in ids[:50]]) is None
        older = [beat(i, 1, "old") for i in ids]
        older.append(beat(ids[60], 20, "newest"))  # a duplicate key in one write: it wins
        result = await sink.write(older)
    finally:
        await sink.close()
    assert result is not None
    assert sorted(result.stale) == [*range(50), 60]
    got = await stored(pg, table)
    assert {got[i][1] for i in ids[:50]} == {"new"}
    assert got[ids[60]][1] == "newest"
    assert got[ids[61]][1] == "old"
