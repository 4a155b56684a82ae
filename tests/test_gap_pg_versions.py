"""The version condition of PostgresSink's upsert, proven with forced orders (issue 18:
without it, "newest wins" failed only 9 of 20 runs, because nothing made the older version
land last, and the max_in_flight test never observed two writes in flight).

Here a barrier holds the write of the older versions until the newer ones have committed,
on another connection (another pool, or the same batcher's second write slot), so the older
write always lands last: only the version condition can keep the newer rows.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

import writebehind as wb

from .pg import DSN

pytestmark = pytest.mark.server

FAR = 3600.0
KEYS = 100


class HeldUntil:
    """Wraps a sink: its first write waits (up to 10 s) until ``release`` is set before it
    goes to the database. Records how many writes were in flight at once."""

    def __init__(self, sink: Any, release: asyncio.Event) -> None:
        self.sink, self.release = sink, release
        self.started = self.in_flight = self.most = self.committed = 0
        self.gave_up = False

    async def start(self) -> None:
        await self.sink.start()

    async def close(self) -> None:
        await self.sink.close()

    async def write(self, batch: list[Any]) -> None:
        self.started += 1
        first = self.started == 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            if first:
                try:
                    async with asyncio.timeout(10):
                        await self.release.wait()
                except TimeoutError:
                    self.gave_up = True  # the barrier never opened: reported, not hung
            await self.sink.write(batch)
            self.committed += 1
        finally:
            self.in_flight -= 1


async def make_table(pg: asyncpg.Connection) -> str:
    name = f"ver_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL, note text)")
    return name


@pytest.mark.parametrize("method", ["unnest", "copy"])
async def test_two_writers_the_older_version_landing_last_loses(
    pg: asyncpg.Connection, method: str
) -> None:
    """Two batchers with pools of their own: the one with the older versions is held until
    the newer versions committed, then writes: every row keeps the newer version."""
    table = await make_table(pg)
    newer_done = asyncio.Event()
    older_sink = HeldUntil(
        wb.PostgresSink(DSN, table=table, key="id", version="v", method=method), newer_done
    )
    try:
        async with (
            wb.AsyncBatcher(older_sink, key="id", version="v", linger=FAR) as older,
            wb.AsyncBatcher(
                wb.PostgresSink(DSN, table=table, key="id", version="v", method=method),
                key="id", version="v", linger=FAR,
            ) as newer,
        ):  # fmt: skip
            for k in range(KEYS):
                older.add_nowait({"id": k, "v": 1, "note": "older"})
                newer.add_nowait({"id": k, "v": 2, "note": "newer"})
            held = asyncio.ensure_future(older.flush())
            async with asyncio.timeout(10):
                while older_sink.started == 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
            await newer.flush()
            assert await pg.fetchval(f"SELECT count(*) FROM {table} WHERE v = 2") == KEYS
            newer_done.set()
            await held
            assert older_sink.committed == 1  # the older batch was written, and lost
        assert not older_sink.gave_up
        rows = await pg.fetch(f"SELECT note, v, count(*) FROM {table} GROUP BY note, v")
        assert [tuple(r) for r in rows] == [("newer", 2, KEYS)]
    finally:
        await pg.execute(f"DROP TABLE IF EXISTS {table}")


async def test_max_in_flight_overlaps_and_the_older_batch_lands_last(
    pg: asyncpg.Connection,
) -> None:
    """max_in_flight=2: the batch of versions 1 is held in flight while the batch of
    versions 2 (same keys) is written beside it on the pool's second connection (two writes
    observed in flight), and commits first; the held batch then lands and loses."""
    table = await make_table(pg)
    second_committed = asyncio.Event()
    sink = HeldUntil(
        wb.PostgresSink(DSN, table=table, key="id", version="v", pool_size=2),
        second_committed,
    )
    try:
        async with wb.AsyncBatcher(
            sink, key="id", version="v", max_batch=KEYS, max_in_flight=2, linger=FAR
        ) as b:
            for k in range(KEYS):  # max_batch records: cut and written at once
                b.add_nowait({"id": k, "v": 1, "note": "v1"})
            async with asyncio.timeout(10):
                while sink.started == 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
            for k in range(KEYS):
                b.add_nowait({"id": k, "v": 2, "note": "v2"})
            async with asyncio.timeout(10):
                while sink.committed == 0 and not sink.gave_up:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
            second_committed.set()
            await b.flush()
            s = b.stats()
        assert not sink.gave_up, "the second batch never started beside the held one"
        assert sink.most == 2, sink.most
        assert (s.committed, s.batches, s.coalesced, s.lost) == (2 * KEYS, 2, 0, 0), s
        rows = await pg.fetch(f"SELECT note, v, count(*) FROM {table} GROUP BY note, v")
        assert [tuple(r) for r in rows] == [("v2", 2, KEYS)]
    finally:
        await pg.execute(f"DROP TABLE IF EXISTS {table}")
