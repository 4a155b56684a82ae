"""One member of a fleet sharing a RedisSharedCapacity (run by tests/test_capacity_fleet.py).

    python tests/fleet_worker.py OUT --mode batcher --url URL --name NAME --shared 2000
        --partition 100 --reserved 0 --lease 2 --cost 10 --until WALL_TIME

Demand is always above what the capacity grants, until the wall-clock time ``--until``:

* ``--mode batcher``: a real ``AsyncBatcher`` with ``capacity=RedisSharedCapacity(...)`` and
  ``cost=``, fed faster than it grants (``add()`` blocks while ``max_pending`` records wait,
  so its ``needs_capacity`` stays above anything the fleet could grant); then it closes with
  a short deadline (what is left is reported lost, not the test's concern);
* ``--mode api``: no batcher, the Capacity API as a batcher uses it (``attach`` with a
  ``needs()`` reporting a large backlog, ``take`` what is granted, and when nothing is,
  sleep what ``wait_for`` says): for an engine without ``capacity=``.

It appends to OUT, one line each, flushed at once (a SIGKILL loses none already written)::

    start <time.time()>
    g <time.time()> <cost written (a batch), or granted (api)>
    r <time.time()> <rate> <reason> <partitions>      a change of rate (CapacityChanged)
    end <time.time()> <the capacity's describe() as JSON>

Its log (the ``writebehind`` logger at INFO) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

import writebehind as wb
from writebehind._clock import MonotonicClock
from writebehind.scale import RedisSharedCapacity

BACKLOG = 1e12  # what the api mode's "batcher" needs: more than the fleet could ever grant


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--mode", choices=("batcher", "api"), default="batcher")
    p.add_argument("--url", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--shared", type=float, required=True)
    p.add_argument("--partition", type=float, required=True)
    p.add_argument("--reserved", type=float, default=0.0)
    p.add_argument("--lease", type=float, required=True)
    p.add_argument("--cost", type=float, default=10.0)
    p.add_argument("--until", type=float, required=True)
    return p.parse_args()


async def with_batcher(a: argparse.Namespace, cap: RedisSharedCapacity, out: TextIO) -> None:
    async def write(batch: list[Any]) -> None:
        out.write(f"g {time.time():.6f} {a.cost * len(batch):g}\n")

    options: dict[str, Any] = {"cost": a.cost, "capacity": cap}  # not typed: see api mode
    batcher = wb.AsyncBatcher(wb.CallableSink(write), max_batch=100, linger=0.05,
                              max_pending=1000, **options)  # fmt: skip

    async def watch() -> None:
        async for event in batcher.events(since=0):
            if type(event).__name__ == "CapacityChanged":
                e: Any = event
                out.write(f"r {time.time():.6f} {e.per_second:g} {e.reason} {e.partitions}\n")

    out.write(f"start {time.time():.6f}\n")
    await batcher.start()
    watching = asyncio.create_task(watch())
    n = 0
    while time.time() < a.until:
        await batcher.add({"n": n})  # blocks while 1,000 records wait: demand above capacity
        n += 1
    described = cap.describe()
    await batcher.close(timeout=0.5)
    await watching
    out.write(f"end {time.time():.6f} {json.dumps(described)}\n")


def with_api(a: argparse.Namespace, cap: RedisSharedCapacity, out: TextIO) -> None:
    lock = threading.Lock()  # the capacity's thread writes rate changes

    def line(text: str) -> None:
        with lock:
            out.write(text + "\n")

    def listener(reason: str) -> None:
        d = cap.describe()
        line(f"r {time.time():.6f} {d['per_second']:g} {reason} {d['partitions']}")

    def needs() -> float:
        return BACKLOG

    line(f"start {time.time():.6f}")
    cap.attach(needs, listener, MonotonicClock())
    try:
        while time.time() < a.until:
            granted = cap.take(a.cost, BACKLOG)
            if granted is None:
                wait = cap.wait_for(a.cost)
                time.sleep(0.05 if wait is None else min(max(wait, 0.001), 0.05))
                continue
            line(f"g {time.time():.6f} {granted:g}")
    finally:
        described = cap.describe()
        cap.detach(needs, listener)
        line(f"end {time.time():.6f} {json.dumps(described)}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    a = arguments()
    cap = RedisSharedCapacity(a.url, name=a.name, shared=a.shared, reserved=a.reserved,
                              partition=a.partition, lease=a.lease)  # fmt: skip
    with open(a.out, "a", buffering=1) as out:  # line-buffered: a SIGKILL loses no line
        if a.mode == "batcher":
            asyncio.run(with_batcher(a, cap, out))
        else:
            with_api(a, cap, out)


if __name__ == "__main__":
    main()
