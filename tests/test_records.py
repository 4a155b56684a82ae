"""sinks/_records: reading records of every kind into rows, grouped by their shape."""

from __future__ import annotations

import dataclasses
from collections import UserDict
from typing import Any, NamedTuple

import msgspec
import pydantic
import pytest

import writebehind as wb
from writebehind.sinks._records import field_names, group_rows


@dataclasses.dataclass
class Beat:
    id: str
    status: str
    v: int


@dataclasses.dataclass
class BeatWithNote:
    id: str
    status: str
    v: int
    note: str


class Plain:
    def __init__(self, id: str, v: int, **extra: Any) -> None:
        self.id, self.v = id, v
        self._cache = None  # private: never a field
        for k, x in extra.items():
            setattr(self, k, x)


class Point(NamedTuple):
    id: str
    v: int


class PointWithNote(NamedTuple):
    id: str
    v: int
    note: str


def _as_dicts(groups: dict[tuple[str, ...], list[tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """Every row as a dict of its field names, in the order the groups give them."""
    return sorted(
        (dict(zip(names, row, strict=True)) for names, rows in groups.items() for row in rows),
        key=lambda d: (d["id"], len(d)),
    )


def test_dataclasses_of_two_shapes_keep_every_field() -> None:
    """A dataclass with an extra field, after one without, keeps the extra field."""
    groups = group_rows([Beat("a", "up", 1), BeatWithNote("b", "up", 2, "hello")])
    assert _as_dicts(groups) == [
        {"id": "a", "status": "up", "v": 1},
        {"id": "b", "status": "up", "v": 2, "note": "hello"},
    ]


def test_dataclass_subclass_keeps_its_own_fields() -> None:
    """A subclass of the first record's dataclass is read with its own fields."""

    @dataclasses.dataclass
    class Sub(Beat):
        note: str = ""

    groups = group_rows([Beat("a", "up", 1), Sub("b", "up", 2, "n")])
    assert {"id": "b", "status": "up", "v": 2, "note": "n"} in _as_dicts(groups)


def test_plain_objects_with_an_optional_attribute_keep_it() -> None:
    """An attribute set on some plain objects only is written for those objects, whichever
    record comes first; private attributes are never fields."""
    for batch in (
        [Plain("a", 1), Plain("b", 2, note="x")],
        [Plain("b", 2, note="x"), Plain("a", 1)],
    ):
        assert _as_dicts(group_rows(batch)) == [
            {"id": "a", "v": 1},
            {"id": "b", "v": 2, "note": "x"},
        ]


def test_named_tuples_of_two_shapes_keep_every_field() -> None:
    """Named tuples of different classes are read with their own fields."""
    groups = group_rows([Point("a", 1), PointWithNote("b", 2, "x")])
    assert _as_dicts(groups) == [{"id": "a", "v": 1}, {"id": "b", "v": 2, "note": "x"}]


def test_mappings_and_mixed_kinds() -> None:
    """Dicts, other mappings, dataclasses and objects in one batch each keep their fields."""
    batch: list[Any] = [
        {"id": "a", "v": 1},
        {"id": "b", "v": 2, "note": "d"},
        UserDict({"id": "c", "v": 3}),
        UserDict({"id": "d", "v": 4, "note": "u"}),
        Beat("e", "up", 5),
        Plain("f", 6, note="p"),
    ]
    rows = _as_dicts(group_rows(batch))
    assert rows == [
        {"id": "a", "v": 1},
        {"id": "b", "v": 2, "note": "d"},
        {"id": "c", "v": 3},
        {"id": "d", "v": 4, "note": "u"},
        {"id": "e", "status": "up", "v": 5},
        {"id": "f", "v": 6, "note": "p"},
    ]
    for first in batch:  # whichever kind comes first
        assert _as_dicts(group_rows([first, *[r for r in batch if r is not first]])) == rows


def test_one_shape_is_one_group_in_order() -> None:
    """Records of one shape make one group, in batch order (dict key order may vary)."""
    batch = [{"id": "a", "v": 1}, {"v": 2, "id": "b"}, {"id": "c", "v": 3}]
    assert group_rows(batch) == {("id", "v"): [("a", 1), ("b", 2), ("c", 3)]}
    beats = [Beat(str(i), "up", i) for i in range(3)]
    assert group_rows(beats) == {("id", "status", "v"): [(str(i), "up", i) for i in range(3)]}
    assert group_rows([Point("a", 1), Point("b", 2)]) == {("id", "v"): [("a", 1), ("b", 2)]}


def test_unreadable_record_is_a_permanent_error() -> None:
    """A record whose fields cannot be read fails the write permanently (it is isolated)."""
    with pytest.raises(wb.PermanentSinkError, match="int"):
        group_rows([Beat("a", "up", 1), 5])


class Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: str
    v: int


class StrictModel(pydantic.BaseModel):
    id: str
    v: int


def test_pydantic_extra_fields_are_read_not_dropped() -> None:
    """A pydantic model with extra="allow" is read with its extra fields (model_extra),
    whichever record comes first and whatever extras each one has."""
    batch = [
        Model(id="a", v=1),
        Model(id="b", v=2, note="x"),
        Model(id="c", v=3, note="y", status="up"),
        Model(id="d", v=4, status="down"),
    ]
    expected = [
        {"id": "a", "v": 1},
        {"id": "b", "v": 2, "note": "x"},
        {"id": "c", "v": 3, "note": "y", "status": "up"},
        {"id": "d", "v": 4, "status": "down"},
    ]
    for order in (batch, batch[::-1], batch[1:] + batch[:1]):
        assert _as_dicts(group_rows(order)) == expected
    assert field_names(Model(id="b", v=2, note="x")) == ("id", "v", "note")


def test_pydantic_models_without_extras_are_read_by_their_fields() -> None:
    """A plain pydantic model is read by its declared fields, in order, in one group."""
    groups = group_rows([StrictModel(id="a", v=1), StrictModel(id="b", v=2)])
    assert groups == {("id", "v"): [("a", 1), ("b", 2)]}


def test_msgspec_structs_are_read_by_their_fields() -> None:
    """A msgspec Struct is read by its fields; one of another class keeps its own."""

    class S(msgspec.Struct):
        id: str
        v: int

    class T(msgspec.Struct):
        id: str
        v: int
        note: str

    assert _as_dicts(group_rows([S("a", 1), T("b", 2, "x")])) == [
        {"id": "a", "v": 1},
        {"id": "b", "v": 2, "note": "x"},
    ]
