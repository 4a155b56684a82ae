"""One member of a fleet sharing a RedisSharedCapacity (run by tests/test_capacity_fleet.py).

    python tests/fleet_worker.py OUT --url URL --name NAME --shared 2000 --partition 100
        --reserved 0 --lease 2 --cost 10 --until WALL_TIME

Demand is always above what the capacity grants: the worker spends through the Capacity API
as a batcher does (``attach`` with a ``needs()`` reporting a large backlog, then ``take``
what is granted, and when nothing is, sleep what ``wait_for`` says), until the wall-clock
time ``--until``. It appends to OUT, one line each, flushed at once (a SIGKILL loses none
already written)::

    start <time.time()>
    g <time.time()> <cost granted>
    r <time.time()> <rate> <reason> <partitions>      a change of rate it was told about
    end <time.time()> <describe() as JSON>

Its log (the ``writebehind`` logger at INFO) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time

from writebehind._clock import MonotonicClock
from writebehind.scale import RedisSharedCapacity

BACKLOG = 1e12  # what the batchers "need": more than the fleet could ever grant


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--url", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--shared", type=float, required=True)
    p.add_argument("--partition", type=float, required=True)
    p.add_argument("--reserved", type=float, default=0.0)
    p.add_argument("--lease", type=float, required=True)
    p.add_argument("--cost", type=float, default=10.0)
    p.add_argument("--until", type=float, required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")

    cap = RedisSharedCapacity(a.url, name=a.name, shared=a.shared, reserved=a.reserved,
                              partition=a.partition, lease=a.lease)  # fmt: skip
    out = open(a.out, "a", buffering=1)  # noqa: SIM115 - line-buffered for the whole run
    lock = threading.Lock()

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
        cap.detach(needs, listener)
        line(f"end {time.time():.6f} {json.dumps(cap.describe())}")
        out.close()


if __name__ == "__main__":
    main()
