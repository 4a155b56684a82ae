"""Shared fixtures: one behaviour suite runs through both APIs via the ``api`` fixture."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.testing import ManualClock

pytest_plugins = ["tests.pg"]  # fixtures for the PostgreSQL tests: pg, table


class AsyncDriver:
    """Drives an ``AsyncBatcher`` directly on the test's event loop."""

    kind = "async"

    def __init__(self, sink: Any, **options: Any) -> None:
        self.batcher = wb.AsyncBatcher(sink, **options)

    async def start(self) -> None:
        await self.batcher.start()

    async def add(self, record: Any, **kw: Any) -> wb.Receipt:
        return await self.batcher.add(record, **kw)

    def add_nowait(self, record: Any) -> wb.Receipt:
        return self.batcher.add_nowait(record)

    async def flush(self, timeout: float | None = None) -> None:
        await self.batcher.flush(timeout=timeout)

    async def close(self, timeout: float | None = None) -> wb.CloseReport:
        return await self.batcher.close(timeout)

    def stats(self) -> wb.Stats:
        return self.batcher.stats()

    async def outcome(self, receipt: wb.Receipt, timeout: float = 5.0) -> wb.Outcome:
        async with asyncio.timeout(timeout):
            return await receipt


class SyncDriver:
    """Drives a thread-backed ``Batcher``; blocking calls run in a worker thread so the
    test's own loop stays free."""

    kind = "sync"

    def __init__(self, sink: Any, **options: Any) -> None:
        self.batcher = wb.Batcher(sink, **options)

    async def start(self) -> None:
        await asyncio.to_thread(self.batcher.start)

    async def add(self, record: Any, **kw: Any) -> wb.Receipt:
        return await asyncio.to_thread(lambda: self.batcher.add(record, **kw))

    def add_nowait(self, record: Any) -> wb.Receipt:
        return self.batcher.add_nowait(record)

    async def flush(self, timeout: float | None = None) -> None:
        await asyncio.to_thread(self.batcher.flush, timeout)

    async def close(self, timeout: float | None = None) -> wb.CloseReport:
        return await asyncio.to_thread(self.batcher.close, timeout)

    def stats(self) -> wb.Stats:
        return self.batcher.stats()

    async def outcome(self, receipt: wb.Receipt, timeout: float = 5.0) -> wb.Outcome:
        return await asyncio.to_thread(receipt.result, timeout)


Driver = AsyncDriver | SyncDriver


class Open:
    """``async with api(sink, ...) as b`` starts a batcher of the parametrised kind and
    closes it at the end (also checking the conservation identity)."""

    def __init__(self, cls: type[AsyncDriver] | type[SyncDriver]) -> None:
        self.cls = cls
        self.kind = cls.kind
        self.opened: list[Driver] = []

    def __call__(self, sink: Any, **options: Any) -> _Ctx:
        return _Ctx(self, sink, options)


class _Ctx:
    def __init__(self, api: Open, sink: Any, options: dict[str, Any]) -> None:
        self.api, self.sink, self.options = api, sink, options
        self.driver: Driver | None = None

    async def __aenter__(self) -> Driver:
        self.driver = self.api.cls(self.sink, **self.options)
        await self.driver.start()
        self.api.opened.append(self.driver)
        return self.driver

    async def __aexit__(self, *exc: object) -> None:
        assert self.driver is not None
        await self.driver.close()
        assert_conserved(self.driver.stats())


@pytest.fixture(params=[AsyncDriver, SyncDriver], ids=["async", "sync"])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[Open]:
    """Opens batchers through the async API or the sync facade."""
    opener = Open(request.param)
    yield opener
    for d in opener.opened:
        await d.close(timeout=2)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own directory: the default dead-letter file lands there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def assert_conserved(s: wb.Stats) -> None:
    """accepted = committed + coalesced + dead_lettered + dropped + pending + in_flight."""
    total = s.committed + s.coalesced + s.dead_lettered + s.dropped + s.pending + s.in_flight
    assert s.accepted == total, s


async def settle(cond: Any, timeout: float = 5.0) -> None:
    """Let the loop(s) run until ``cond()`` is true; fails after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 - polls state that other threads own
            await asyncio.sleep(0.001)


async def idle(rounds: int = 50) -> None:
    """Give the batcher a chance to act (used to show it did NOT act)."""
    for _ in range(rounds):
        await asyncio.sleep(0.001)


@pytest.fixture
def heartbeat_db(tmp_path: Path) -> Iterator[Path]:
    """A SQLite file with an ``agents`` table keyed by ``id`` with an ``updated_at`` version."""
    path = tmp_path / "hb.db"
    with sqlite3.connect(path) as c:
        c.execute(
            "CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT, updated_at INTEGER NOT NULL)"
        )
    return path


def rows(path: Path, table: str = "agents") -> dict[Any, tuple[Any, ...]]:
    with sqlite3.connect(path) as c:
        return {r[0]: tuple(r[1:]) for r in c.execute(f"SELECT * FROM {table}")}
