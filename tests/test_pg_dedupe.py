"""The asyncpg path's newest-per-key step (``_pg.newest_per_key``): a batch whose keys are
known distinct by C-level passes is returned as it is; any duplicate still keeps the newest
row (a tie: the later one), whatever the key's type."""

from __future__ import annotations

import uuid

import pytest

from writebehind.sinks._pg import _distinct, newest_per_key

NAMES = ("id", "v", "note")


def test_distinct_keys_come_back_as_they_are() -> None:
    for keys in ([uuid.uuid4() for _ in range(50)], list(range(50)), [str(i) for i in range(50)]):
        rows = [(k, 1, "x") for k in keys]
        assert newest_per_key(NAMES, rows, ("id",), "v") is rows


@pytest.mark.parametrize(
    "first", [uuid.UUID(int=7), 7, "7", b"7"], ids=["uuid", "int", "str", "bytes"]
)
def test_a_duplicate_keeps_the_newest(first: object) -> None:
    again = uuid.UUID(str(first)) if isinstance(first, uuid.UUID) else first  # equal, not same
    rows = [(first, 2, "newest"), (uuid.uuid4(), 1, "other"), (again, 1, "older")]
    kept = newest_per_key(NAMES, rows, ("id",), "v")
    assert sorted(r[2] for r in kept) == ["newest", "other"]
    rows.append((first, 2, "tie, later"))
    assert "tie, later" in {r[2] for r in newest_per_key(NAMES, rows, ("id",), "v")}


def test_undecided_types_take_the_loop() -> None:
    assert not _distinct([(1,), (1.0,)], 0)  # mixed types: not decided here
    assert not _distinct([(None,), (1,)], 0)
    rows = [(1, 1, "a"), (1.0, 2, "b")]
    assert [r[2] for r in newest_per_key(NAMES, rows, ("id",), "v")] == ["b"]  # 1 == 1.0
