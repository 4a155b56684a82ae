"""A fleet budget through Redis: two instances of ``RedisSharedCapacity`` split it fairly.

Run: python examples/capacity_shared_redis.py   (``pip install 'writebehind[redis]'``)

It uses the Redis at ``redis://127.0.0.1:6379/0`` unless the environment variable
``WB_REDIS_URL`` names another, and fails at once if that Redis does not answer. The budget
has a name of its own for each run; its keys expire by themselves.

Two instances stand in for two processes of a service (each capacity object has its own
instance id and lease thread, exactly as in two processes): both name the same budget,
``shared=1000`` cost units a second in 10 partitions of 100, leased for 2 s, plus
``reserved=100`` each that needs no lease. Every record costs 10.

* ``a`` starts alone with more work than the budget: it leases all 10 partitions, 1,100/s.
* ``b`` arrives 1.5 s later with as much work: ``a`` releases half at once and ``b`` takes
  them at its next step (a step is every 0.25 s): 600/s each, 1,200/s for the fleet.
* ``b`` stops adding, writes its backlog and closes: it deletes its leases, and ``a`` takes
  them at its next step.

An instance asks for the partitions its backlog's cost calls for (``Stats.needs_capacity``
beyond ``reserved``), so each buffer here holds a little more than a second of the whole
budget (``max_pending=120`` records of cost 10). The script prints each ``CapacityChanged``
event as it happens, then what each instance wrote in each second. It takes about seven
seconds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import defaultdict

import redis

import writebehind as wb

DEFAULT = "redis://127.0.0.1:6379/0"
URL = os.environ.get("WB_REDIS_URL", DEFAULT)
NAME = f"example-{uuid.uuid4().hex[:8]}"  # one budget per run
COST = 10  # every record's cost
SPENT: dict[str, defaultdict[int, float]] = {"a": defaultdict(float), "b": defaultdict(float)}
T0 = time.monotonic()


def instance() -> wb.RedisSharedCapacity:
    """What each process of the service would construct: the same name, the same numbers."""
    return wb.RedisSharedCapacity(
        URL, name=NAME, shared=1_000, partition=100, reserved=100, lease=2.0
    )


def sink(label: str) -> wb.CallableSink:
    """A stand-in for the database: notes the cost written in each second since the start."""

    async def write(batch: list[dict[str, int]]) -> None:
        SPENT[label][int(time.monotonic() - T0)] += COST * len(batch)

    return wb.CallableSink(write)


async def produce(batcher: wb.AsyncBatcher, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        await batcher.add({"n": n})  # waits while the buffer is full: the budget paces it
        n += 1


async def watch(label: str, batcher: wb.AsyncBatcher) -> None:
    async for event in batcher.events():
        if isinstance(event, wb.CapacityChanged):
            rate, why, held = event.per_second, event.reason, event.partitions
            say(f"{label}: {rate:5,.0f}/s ({why}, {held} partitions)")


def say(what: str) -> None:
    print(f"  t={time.monotonic() - T0:4.2f} s  {what}")


async def run(label: str, seconds: float) -> None:
    """One instance: a capacity, a batcher on it, work above the budget for ``seconds``."""
    say(f"{label} starts adding")
    # an instance asks for what its backlog costs (needs_capacity), so the buffer must hold
    # more than a second of the whole budget for one instance to want all of it
    batcher = wb.AsyncBatcher(
        sink(label), capacity=instance(), cost=COST, max_batch=50, max_pending=120,
        linger=0.05, name=label,
    )  # fmt: skip
    async with batcher as b:
        watcher = asyncio.create_task(watch(label, b))
        stop = asyncio.Event()
        producer = asyncio.create_task(produce(b, stop))
        await asyncio.sleep(seconds)
        stop.set()
        await producer
        say(f"{label} stops adding; closing writes its backlog")
    await watcher
    say(f"{label} closed: its leases are deleted")


async def main() -> None:
    print(f"budget {NAME!r}: shared 1,000/s in 10 partitions of 100, reserved 100/s each")
    a = asyncio.create_task(run("a", 6.0))
    await asyncio.sleep(1.5)
    await run("b", 1.5)
    await a
    print("\nsecond        a        b    total   (at most 1,000 + 100 per instance running)")
    for second in range(max(max(SPENT["a"]), max(SPENT["b"])) + 1):
        spent = [SPENT[x][second] for x in ("a", "b")]
        print(f"{second:>6} {spent[0]:>8,.0f} {spent[1]:>8,.0f} {sum(spent):>8,.0f}")


def redis_answers() -> None:
    """Fail at once without Redis: the capacity itself would fall back to its reserved
    100/s and go on (as a service should), which is not what this example is here to show."""
    client = redis.Redis.from_url(URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        where = "WB_REDIS_URL" if "WB_REDIS_URL" in os.environ else DEFAULT  # no password shown
        sys.exit(f"Redis does not answer at {where}: {type(exc).__name__}")
    finally:
        client.close()


if __name__ == "__main__":
    redis_answers()
    asyncio.run(main())
