"""Records and values as people write them, through both SQL sinks (real SQLite files and the
real PostgreSQL): pydantic extras, nested structured values in a JSON column, Enums, the
``json_dumps=`` hook, ISO-8601 strings for typed columns, and errors that name the column
and the record's key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pydantic
import pytest

import writebehind as wb

from .pg import DSN as PG_DSN
from .pg import connect

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Inner:
    name: str
    level: Level
    at: dt.datetime


class InnerModel(pydantic.BaseModel):
    name: str
    color: Color


class InnerStruct(msgspec.Struct):
    name: str
    ref: uuid.UUID


class Extra(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: str
    v: int


PG_TABLE = (
    "id text PRIMARY KEY, v int, note text, status text, doc jsonb, at timestamptz, "
    "day date, ref uuid"
)
SQLITE_TABLE = (
    "id TEXT PRIMARY KEY, v INTEGER, note TEXT, status TEXT, doc JSON, at TEXT, day TEXT, ref TEXT"
)


class Target:
    """One table in one of the two sinks, read back as dicts."""

    def __init__(self, kind: str, make: Callable[..., Any], read: Callable[[], Any]) -> None:
        self.kind = kind
        self.make = make
        self.read = read

    async def write(
        self, records: list[Any], **sink_kw: Any
    ) -> tuple[dict[str, dict[str, Any]], list[wb.DeadLetterEntry]]:
        """Write ``records`` through a batcher; the table's rows by id and the dead letters."""
        letters: list[wb.DeadLetterEntry] = []
        sink = self.make(**sink_kw)
        async with wb.AsyncBatcher(sink, key="id", version="v", dead_letter=letters.extend) as b:
            for r in records:
                b.add_nowait(r)
        return await self.read(), letters


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.server)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """A fresh table in SQLite or PostgreSQL (which fails, never skips, when it is down)."""
    if request.param == "sqlite":
        path = tmp_path / "v.db"
        with sqlite3.connect(path) as c:
            c.execute(f"CREATE TABLE t ({SQLITE_TABLE})")

        async def read_sqlite() -> dict[str, dict[str, Any]]:
            with sqlite3.connect(path) as c:
                c.row_factory = sqlite3.Row
                got = {r["id"]: dict(r) for r in c.execute("SELECT * FROM t")}
            for row in got.values():
                row["doc"] = None if row["doc"] is None else json.loads(row["doc"])
            return got

        yield Target(
            "sqlite",
            lambda **kw: wb.SQLiteSink(path, table="t", key="id", version="v", **kw),
            read_sqlite,
        )
        return
    conn = await connect()
    name = f"vals_{uuid.uuid4().hex[:10]}"
    await conn.execute(f"CREATE TABLE {name} ({PG_TABLE})")

    async def read_pg() -> dict[str, dict[str, Any]]:
        got = {r["id"]: dict(r) for r in await conn.fetch(f"SELECT * FROM {name}")}
        for row in got.values():
            row["doc"] = None if row["doc"] is None else json.loads(row["doc"])
        return got

    try:
        yield Target(
            "postgres",
            lambda **kw: wb.PostgresSink(PG_DSN, table=name, key="id", version="v", **kw),
            read_pg,
        )
    finally:
        await conn.execute(f"DROP TABLE {name}")
        await conn.close()


# -- pydantic extra="allow" -------------------------------------------------------------
async def test_pydantic_extra_fields_are_written(target: Target) -> None:
    """The extra fields of a pydantic model with extra="allow" land in their columns."""
    rows, letters = await target.write(
        [Extra(id="a", v=1, note="hello"), Extra(id="b", v=1), Extra(id="c", v=1, status="up")]
    )
    assert not letters
    assert (rows["a"]["note"], rows["b"]["note"], rows["c"]["status"]) == ("hello", None, "up")


async def test_a_pydantic_extra_that_is_no_column_is_dead_lettered_by_name(
    target: Target,
) -> None:
    """An extra field the table lacks is refused for that record, naming the field; it is
    never dropped silently, and the other records are written."""
    rows, letters = await target.write([Extra(id="a", v=1, colour="red"), Extra(id="b", v=1)])
    assert set(rows) == {"b"}
    assert len(letters) == 1
    assert "'colour'" in letters[0].message


# -- structured values in a JSON column, Enums, json_dumps= -------------------------------
REF = uuid.UUID("12345678-1234-5678-1234-567812345678")
NESTED: dict[str, tuple[Any, Any]] = {
    "dataclass": (
        Inner("a", Level.HIGH, T0),
        {"name": "a", "level": 2, "at": "2026-11-23T12:00:00+00:00"},
    ),
    "pydantic": (InnerModel(name="b", color=Color.BLUE), {"name": "b", "color": "blue"}),
    "msgspec": (InnerStruct("c", REF), {"name": "c", "ref": str(REF)}),
    "enum": (Color.RED, "red"),
    "mixed": (
        {"items": [Inner("d", Level.LOW, T0)], "tags": {Color.RED}},
        {"items": [{"name": "d", "level": 1, "at": T0.isoformat()}], "tags": ["red"]},
    ),
}


@pytest.mark.parametrize("kind", list(NESTED))
async def test_structured_values_in_a_json_column_are_plain_json(target: Target, kind: str) -> None:
    """A nested dataclass, pydantic model, msgspec Struct or Enum (alone or inside dicts and
    lists) is written to a JSON column as plain JSON, not dead-lettered."""
    value, expected = NESTED[kind]
    rows, letters = await target.write([{"id": "a", "v": 1, "doc": value}])
    assert not letters, letters[0].message
    assert rows["a"]["doc"] == expected


async def test_enum_values_are_written_as_their_values(target: Target) -> None:
    """A plain Enum member in an ordinary column is written as its value."""
    rows, letters = await target.write(
        [{"id": "a", "v": 1, "status": Color.BLUE}, {"id": "b", "v": 1, "status": None}]
    )
    assert not letters, letters[0].message
    assert (rows["a"]["status"], rows["b"]["status"]) == ("blue", None)


async def test_json_dumps_hook_is_used_and_may_return_bytes(target: Target) -> None:
    """json_dumps= replaces json.dumps for JSON columns; bytes (orjson's) are accepted."""
    calls: list[Any] = []

    def dumps(obj: Any) -> bytes:
        calls.append(obj)
        return json.dumps({"wrapped": obj}, default=str).encode()

    rows, letters = await target.write([{"id": "a", "v": 1, "doc": {"k": 1}}], json_dumps=dumps)
    assert not letters, letters[0].message
    assert calls == [{"k": 1}]
    assert rows["a"]["doc"] == {"wrapped": {"k": 1}}


async def test_a_value_json_cannot_encode_names_the_column_and_key(target: Target) -> None:
    """A value the JSON encoder refuses dead-letters its record alone, with an error that
    names the column and the record's key; the others are written."""
    rows, letters = await target.write(
        [{"id": "a", "v": 1, "doc": {"k": object()}}, {"id": "b", "v": 1, "doc": {"k": 2}}]
    )
    assert set(rows) == {"b"}
    assert len(letters) == 1
    assert "column 'doc'" in letters[0].message
    assert "id='a'" in letters[0].message


def test_json_dumps_must_be_callable() -> None:
    """json_dumps= that is not a function is a ConfigError naming the option, in both sinks."""
    with pytest.raises(wb.ConfigError, match="json_dumps"):
        wb.SQLiteSink("x.db", table="t", json_dumps="orjson")  # type: ignore[arg-type]
    with pytest.raises(wb.ConfigError, match="json_dumps"):
        wb.PostgresSink(PG_DSN, table="t", json_dumps=42)  # type: ignore[arg-type]


# -- ISO-8601 strings for typed columns; errors that name the column and the key -----------
async def test_iso_strings_for_timestamp_date_and_uuid_columns_are_written(
    target: Target,
) -> None:
    """ISO-8601 strings for a timestamptz, date or uuid column are written (PostgreSQL parses
    them into the column's type, a string without an offset read as UTC as a naive datetime
    is; SQLite stores the text), and the version comparison still holds."""
    rows, letters = await target.write(
        [
            {"id": "a", "v": 1, "at": "2026-11-23T12:00:00Z", "day": "2026-11-23", "ref": str(REF)},
            {"id": "b", "v": 1, "at": "2026-11-23T13:00:00+01:00"},
            {"id": "c", "v": 1, "at": "2026-11-23 12:00:00"},
        ]
    )
    assert not letters, letters[0].message
    if target.kind == "postgres":
        assert rows["a"]["at"] == rows["b"]["at"] == rows["c"]["at"] == T0
        assert (rows["a"]["day"], rows["a"]["ref"]) == (T0.date(), REF)
    else:
        assert (rows["a"]["at"], rows["a"]["day"], rows["a"]["ref"]) == (
            "2026-11-23T12:00:00Z",
            "2026-11-23",
            str(REF),
        )


@pytest.mark.server
async def test_a_malformed_iso_string_names_the_column_and_key(tmp_path: Path) -> None:
    """A string PostgreSQL's timestamptz, date or uuid column cannot take dead-letters its
    record alone, with an error naming the column and the record's key (not a query
    argument number)."""
    conn = await connect()
    name = f"vals_{uuid.uuid4().hex[:10]}"
    await conn.execute(f"CREATE TABLE {name} ({PG_TABLE})")
    try:
        letters: list[wb.DeadLetterEntry] = []
        sink = wb.PostgresSink(PG_DSN, table=name, key="id", version="v")
        async with wb.AsyncBatcher(sink, key="id", version="v", dead_letter=letters.extend) as b:
            b.add_nowait({"id": "a", "v": 1, "at": "yesterday"})
            b.add_nowait({"id": "b", "v": 1, "day": "2026-02-30"})
            b.add_nowait({"id": "c", "v": 1, "ref": "not-a-uuid"})
            b.add_nowait({"id": "d", "v": 1, "at": "2026-11-23T12:00:00Z"})
        written = [r["id"] for r in await conn.fetch(f"SELECT id FROM {name}")]
    finally:
        await conn.execute(f"DROP TABLE {name}")
        await conn.close()
    assert written == ["d"]
    messages = {e.record["id"]: e.message for e in letters}
    for key, column in (("a", "at"), ("b", "day"), ("c", "ref")):
        assert f"column '{column}'" in messages[key], messages[key]
        assert f"id='{key}'" in messages[key], messages[key]
        assert "query argument" not in messages[key]


async def test_a_value_the_driver_refuses_names_the_column_and_key(target: Target) -> None:
    """A value the driver cannot bind for its column (a set for a text column) dead-letters
    its record alone; the error names the column and the record's key."""
    rows, letters = await target.write(
        [
            {"id": "a", "v": 1, "note": "fine"},
            {"id": "b", "v": 1, "note": {1, 2}},
            {"id": "c", "v": 1, "note": "fine"},
        ]
    )
    assert set(rows) == {"a", "c"}
    assert len(letters) == 1
    assert "column 'note'" in letters[0].message, letters[0].message
    assert "id='b'" in letters[0].message, letters[0].message
    assert "query argument" not in letters[0].message
