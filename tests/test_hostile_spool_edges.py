"""Hostile review of the durable spool: odd records through a crash, odd paths, lifecycle
misuse, and spill mode under an I/O fault. These held up."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import enum
import errno
import math
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
import writebehind._spooling as spooling
from writebehind.spool.testing import FaultyFileSystem
from writebehind.testing import GatedSink, MemorySink

from .conftest import assert_conserved, settle

OC = wb.Outcome


class _Color(enum.Enum):
    RED = "red"


class _Num(enum.IntEnum):
    ONE = 1


@dataclasses.dataclass
class _Point:
    x: int
    y: tuple[int, ...]


def _nest(depth: int) -> Any:
    x: Any = 0
    for _ in range(depth):
        x = [x]
    return x


_EXACT: dict[str, Any] = {
    "non_str_keys": {1: "a", (1, 2): "b", None: 3, False: 4},
    "tuple": (1, (2, 3), [4]),
    "bytes": b"\x00\xff",
    "nan": float("nan"),
    "neg_inf": float("-inf"),
    "neg_zero": -0.0,
    "huge_float": 1e300,
    "huge_int": 2**200,
    "decimal_nan": decimal.Decimal("NaN"),
    "decimal_scale": decimal.Decimal("1.000"),
    "aware": dt.datetime(2024, 3, 10, 2, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    "date": dt.date(2020, 1, 1),
    "time": dt.time(1, 2, 3, 4, tzinfo=dt.UTC),
    "uuid": uuid.UUID(int=7),
    "nul": "a\x00b",
    "surrogate": "x\udce9y",
    "looks_like_a_tag": {"$dt": "x"},
    "empty_key": {"": 1},
    "deep": _nest(150),
}
_PLAIN: dict[str, tuple[Any, Any]] = {  # documented: comes back as plain data
    "bytearray": (bytearray(b"ab"), b"ab"),
    "enum": (_Color.RED, "red"),
    "int_enum": (_Num.ONE, 1),
    "dataclass": (_Point(1, (2,)), {"x": 1, "y": (2,)}),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, decimal.Decimal) and a.is_nan():
        return isinstance(b, decimal.Decimal) and b.is_nan()
    return type(a) is type(b) and repr(a) == repr(b)


async def test_odd_values_come_back_from_a_crash_as_documented(tmp_path: Path) -> None:
    """Records holding odd values are left in the spool at the close deadline and delivered
    by the next batcher: each value comes back exactly (type and repr), or as the plain
    data the docs promise (enum as its value, dataclass as a dict, bytearray as bytes)."""
    spool = tmp_path / "s"
    first = wb.AsyncBatcher(GatedSink(), key="id", version="v", spool=spool, linger=3600,
                            max_batch=100, max_pending=100)  # fmt: skip
    await first.start()
    values = {**_EXACT, **{k: v for k, (v, _) in _PLAIN.items()}}
    for name, value in values.items():
        await first.add({"id": name, "v": 1, "val": value})
    report = await first.close(timeout=0.2)
    assert (report.spooled, report.lost) == (len(values), 0)
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", version="v", spool=spool) as second:
        await second.flush(timeout=10)
    got = {r["id"]: r["val"] for r in sink.records}
    for name, value in _EXACT.items():
        assert _same(value, got[name]), name
    for name, (_, plain) in _PLAIN.items():
        assert _same(plain, got[name]), name


@pytest.mark.parametrize(
    "value", [{1, 2}, frozenset([1]), _nest(300), print, 1j], ids=["set", "frozenset", "deep",
                                                                 "function", "complex"]
)  # fmt: skip
async def test_unstorable_values_are_refused_and_not_accepted(tmp_path: Path, value: Any) -> None:
    """A value the spool cannot keep as data is refused at add() (RecordError), in spool
    mode and in spill mode once the record spills; nothing is counted."""
    async with wb.AsyncBatcher(MemorySink(), key="id", spool=tmp_path / "s") as b:
        with pytest.raises(wb.RecordError):
            await b.add({"id": 1, "val": value})
        assert b.stats().accepted == 0
    gate = GatedSink()
    async with wb.AsyncBatcher(gate, key="id", spool=tmp_path / "t", when_full="spill",
                               max_pending=1, max_batch=1, linger=0) as b:  # fmt: skip
        await b.add({"id": 0})
        await settle(lambda: gate.waiting == 1)
        with pytest.raises(wb.RecordError):
            await b.add({"id": 1, "val": value})
        assert b.stats().accepted == 1
        gate.open()


@pytest.mark.parametrize("kind", ["under_a_file", "dangling_symlink", "symlink_loop"])
async def test_odd_paths_are_config_errors(tmp_path: Path, kind: str) -> None:
    (tmp_path / "f").write_text("x")
    os.symlink(tmp_path / "nowhere" / "x", tmp_path / "dangling")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    path = {"under_a_file": tmp_path / "f" / "sub", "dangling_symlink": tmp_path / "dangling",
            "symlink_loop": tmp_path / "loop"}[kind]  # fmt: skip
    b = wb.AsyncBatcher(MemorySink(), key="id", spool=path)
    with pytest.raises(wb.ConfigError, match="spool directory"):
        await b.start()


async def test_a_symlink_to_a_private_spool_is_the_same_spool(tmp_path: Path) -> None:
    """A symlink to a spool directory opens that spool: its lock refuses a second batcher
    through the other name."""
    real = tmp_path / "real"
    os.symlink(real, tmp_path / "link")
    async with wb.AsyncBatcher(MemorySink(), key="id", spool=real):
        b = wb.AsyncBatcher(MemorySink(), key="id", spool=tmp_path / "link")
        with pytest.raises(wb.ConfigError, match="in use"):
            await b.start()


@pytest.mark.parametrize(
    "bad",
    [{"max_bytes": True}, {"max_bytes": 1.5e9}, {"max_bytes": -1}, {"segment_bytes": 0},
     {"fsync": None}, {"fsync": "always"}, {"max_bytes": 65536, "segment_bytes": 32768}],
)  # fmt: skip
def test_bad_spool_arguments(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(wb.ConfigError):
        wb.Spool(tmp_path / "s", **bad)


async def test_close_twice_and_add_after_close(tmp_path: Path) -> None:
    """close() twice returns the same report; every add after it is BatcherClosed, and
    nothing is appended to the spool by it."""
    spool = tmp_path / "s"
    b = wb.AsyncBatcher(GatedSink(), key="id", spool=spool, when_full="spill", max_pending=1,
                        max_batch=1, linger=0)  # fmt: skip
    await b.start()
    await b.add({"id": 0})
    await b.add({"id": 1})  # spilled
    report = await b.close(timeout=0.2)
    assert await b.close() is report
    assert (report.lost, report.spooled) == (1, 1)
    with pytest.raises(wb.BatcherClosed):
        b.add_nowait({"id": 2})
    with pytest.raises(wb.BatcherClosed):
        await b.add({"id": 3})
    async with wb.AsyncBatcher(MemorySink(), key="id", spool=spool) as again:
        assert again.stats().recovered == 1


async def test_spill_under_an_fsync_fault_nothing_unsynced_is_durable_then_it_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spill mode on a disk whose fsync fails (EIO): a spilled record is not durable while
    the fault lasts (receipt.durable() waits, add() does not return), and becomes durable,
    then written, once it clears; the identity holds throughout."""
    fs = FaultyFileSystem()
    monkeypatch.setattr(spooling, "_FILESYSTEM", fs)
    gate = GatedSink()
    async with wb.AsyncBatcher(gate, key="id", spool=tmp_path / "s", when_full="spill",
                               max_pending=1, max_batch=1, linger=0) as b:  # fmt: skip
        await b.add({"id": 0})
        await settle(lambda: gate.waiting == 1)
        fs.fail("fsync", errno.EIO, after=0, times=None)
        r = b.add_nowait({"id": 1})
        waiting = asyncio.ensure_future(b.add({"id": 2}))
        durable = asyncio.ensure_future(r.durable())
        await asyncio.sleep(0.3)
        assert not durable.done()
        assert not waiting.done()
        assert_conserved(b.stats())
        fs.clear()
        async with asyncio.timeout(10):
            await durable
            await waiting
        gate.open()
        await b.flush(timeout=10)
        s = b.stats()
        assert (s.accepted, s.committed) == (3, 3)
    assert sorted(x["id"] for x in gate.records) == [0, 1, 2]


async def test_spill_close_during_an_fsync_fault_counts_unsynced_as_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Close at the deadline while fsync fails: the spilled records never synced are LOST
    (not SPOOLED), the in-memory ones LOST; lost + spooled + committed == accepted."""
    fs = FaultyFileSystem()
    monkeypatch.setattr(spooling, "_FILESYSTEM", fs)
    gate = GatedSink()
    b = wb.AsyncBatcher(gate, key="id", spool=tmp_path / "s", when_full="spill",
                        max_pending=2, max_batch=2, linger=0)  # fmt: skip
    await b.start()
    await b.add({"id": 0})
    await b.add({"id": 1})
    await settle(lambda: gate.waiting == 1)
    synced = await b.add({"id": 2})  # spilled and durable
    fs.fail("fsync", errno.EIO, after=0, times=None)
    unsynced = [b.add_nowait({"id": i}) for i in range(3, 6)]
    report = await b.close(timeout=0.3)
    assert synced.outcome is OC.SPOOLED
    assert {r.outcome for r in unsynced} == {OC.LOST}
    s = report.stats
    assert s.accepted == report.lost + report.spooled + s.committed
    assert report.spooled == 1
