"""Fixtures and helpers for the fault tests: a private PostgreSQL cluster, a counting sink,
a dead-letter collector and an event recorder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

import writebehind as wb

from .cluster import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A private PostgreSQL cluster that the restart tests may stop and start; always
    stopped and removed at the end. Fails (never skips) if it cannot be created."""
    try:
        c = Cluster()
    except RuntimeError as exc:
        pytest.fail(f"a private PostgreSQL cluster is required: {exc}")
    try:
        c.init()
        c.start()
    except Exception as exc:
        c.destroy()
        pytest.fail(f"could not start a private PostgreSQL cluster: {exc!r}")
    try:
        yield c
    finally:
        c.destroy()


@pytest.fixture
async def private_pg(cluster: Cluster) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the private cluster (which is started again if a test left it down)."""
    if not cluster.ready():
        cluster.start()
    conn = await asyncpg.connect(cluster.dsn, timeout=10)
    yield conn
    await conn.close()


class CountingSink:
    """Wraps a sink and counts its ``write`` calls (failed ones included)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes = 0

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, batch: list[Any]) -> None:
        self.writes += 1
        await self.inner.write(batch)

    async def close(self) -> None:
        await self.inner.close()

    def __repr__(self) -> str:
        return f"CountingSink({self.inner!r})"


class DeadLetters:
    """A ``dead_letter=`` callable that keeps every entry it is given."""

    def __init__(self) -> None:
        self.entries: list[Any] = []

    def __call__(self, entries: list[Any]) -> None:
        self.entries.extend(entries)

    @property
    def records(self) -> list[Any]:
        return [e.record for e in self.entries]


@dataclass
class Recorder:
    """Collects a batcher's events with the time each was published (``event.at``,
    wall-clock seconds: ``time.time()``), not the time this reader got round to it, which
    trails by however long the loop was busy. Compare with ``time.time()`` readings."""

    seen: list[tuple[float, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self, batcher: wb.AsyncBatcher) -> None:
        async def run() -> None:
            async for event in batcher.events(since=0):
                self.seen.append((event.at, event))

        self.task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self.task is not None:
            async with asyncio.timeout(5):
                await self.task

    def of(self, kind: type[Any], after: float = float("-inf")) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.seen if isinstance(e, kind) and t >= after]
