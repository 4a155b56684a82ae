"""``writebehind demo --fleet N --capacity C``: N processes, one PostgreSQL, one budget.

Each instance (:mod:`._fleet_worker`, a process of its own) heartbeats its share of the
agents into the same table through an :class:`~writebehind.AsyncBatcher` whose writes
spend one :class:`~writebehind.RedisSharedCapacity` (a fresh name per run, so leases of an
earlier run never count). They offer far more than ``C`` records per second; the capacity
holds the fleet to ``C``. Every second this prints each instance's committed rate and the
fleet's total against ``C``; at the end, the mean rates and every 5-second window of the
fleet's total. Exit status 0 when nothing was lost and every window after the first lease
step stayed within +5% of ``C``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .. import ConfigError
from .._redact import redact_dsn

__all__ = ["FleetConfig", "run_fleet"]

_WINDOW = 5.0  # seconds: the fleet's rate is judged over windows this long
_WARMUP = 1.0  # seconds after every instance started before windows are judged
_TOLERANCE = 0.05  # a window may exceed the capacity by this fraction (the bucket's burst)
_PARTITIONS_PER_INSTANCE = 5  # partition size: the fair share is this many partitions


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetConfig:
    """``demo --fleet``'s settings."""

    instances: int
    capacity: float
    dsn: str
    redis: str = "redis://127.0.0.1:6379/0"
    reserved: float = 0.0
    lease: float = 15.0
    agents: int = 10_000
    duration: float = 20.0
    table: str = "agent_heartbeats"
    reset: bool = False
    linger: float = 0.5

    @property
    def shared(self) -> float:
        """What the instances lease: the capacity less every instance's reserved part."""
        return self.capacity - self.instances * self.reserved

    @property
    def partition(self) -> float:
        return max(1.0, math.floor(self.shared / (self.instances * _PARTITIONS_PER_INSTANCE)))

    def check(self) -> None:
        if self.shared <= 0:
            raise ConfigError(
                f"--reserved {self.reserved:g} x {self.instances} instances leaves nothing of "
                f"--capacity {self.capacity:g} to share: lower --reserved"
            )


def run_fleet(config: FleetConfig) -> int:
    """Run the fleet demo; 0 if nothing was lost and the fleet kept to its capacity."""
    config.check()
    return asyncio.run(_main(config))


async def _prepare(config: FleetConfig) -> None:
    from ._postgres import PostgresTarget

    target = PostgresTarget(config.dsn, config.table)
    try:
        await target.prepare(reset=config.reset)
    finally:
        await target.close()


async def _main(config: FleetConfig) -> int:
    await _prepare(config)
    name = f"demo-{uuid.uuid4().hex[:8]}"
    n = config.instances
    print(
        f"fleet of {n} -> PostgreSQL ({redact_dsn(config.dsn)}, table {config.table}); "
        f"capacity {config.capacity:,.0f}/s: shared {config.shared:,.0f} in partitions of "
        f"{config.partition:,.0f} through Redis (name {name}), reserved {config.reserved:,.0f} "
        f"per instance; {config.agents:,} agents, {config.duration:g} s",
        flush=True,
    )
    per = [config.agents // n + (1 if i < config.agents % n else 0) for i in range(n)]
    procs = [await _spawn(config, name, i, max(1, per[i])) for i in range(n)]
    samples: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    closed: list[dict[str, Any] | None] = [None] * n
    failures: list[str] = []
    readers = [
        asyncio.create_task(_read(p, i, samples[i], closed, failures)) for i, p in enumerate(procs)
    ]
    printer = asyncio.create_task(_print_live(config, samples))
    try:
        await asyncio.gather(*readers)
    finally:
        printer.cancel()
        for p in procs:
            if p.returncode is None:
                p.kill()
            await p.wait()
    return _summary(config, samples, closed, failures)


async def _spawn(config: FleetConfig, name: str, index: int, agents: int) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "writebehind.cli._fleet_worker",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    settings = {
        "index": index + 1, "dsn": config.dsn, "redis": config.redis, "name": name,
        "shared": config.shared, "reserved": config.reserved, "partition": config.partition,
        "lease": config.lease, "agents": agents, "duration": config.duration,
        "table": config.table, "linger": config.linger,
        "max_batch": max(1, int(config.capacity / config.instances / 4)),
    }  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(settings) + "\n").encode())
    await proc.stdin.drain()
    proc.stdin.close()
    return proc


async def _read(
    proc: Any, i: int, samples: list[tuple[float, int]], closed: list[Any], failures: list[str]
) -> None:
    assert proc.stdout is not None
    async for line in proc.stdout:
        msg = json.loads(line)
        if msg["event"] in ("tick", "stopping"):
            samples.append((msg["t"], msg["committed"]))
        elif msg["event"] == "started":
            samples.append((msg["t"], 0))
        elif msg["event"] == "closed":
            closed[i] = msg
        elif msg["event"] == "failed":
            failures.append(f"instance {i + 1}: {msg['error']}")


def _rate_between(samples: list[tuple[float, int]], t0: float, t1: float) -> float:
    """Records committed per second between wall times ``t0`` and ``t1`` (interpolated)."""

    def at(t: float) -> float:
        if not samples or t <= samples[0][0]:
            return 0.0
        for (ta, ca), (tb, cb) in itertools.pairwise(samples):
            if ta <= t <= tb:
                return ca + (cb - ca) * ((t - ta) / (tb - ta) if tb > ta else 1.0)
        return float(samples[-1][1])

    return (at(t1) - at(t0)) / (t1 - t0)


async def _print_live(config: FleetConfig, samples: list[list[tuple[float, int]]]) -> None:
    start = time.time()
    while True:
        await asyncio.sleep(1.0)
        now = time.time() - 0.5  # the workers report every 0.5 s: look just behind
        rates = [_rate_between(s, now - 1.0, now) for s in samples]
        total = sum(rates)
        each = "  ".join(f"#{i + 1} {r:7,.0f}" for i, r in enumerate(rates))
        print(
            f"t={now - start:5.1f}s  fleet {total:8,.0f}/s ({total / config.capacity:6.1%} of "
            f"{config.capacity:,.0f})  {each}",
            flush=True,
        )


def _summary(
    config: FleetConfig,
    samples: list[list[tuple[float, int]]],
    closed: list[dict[str, Any] | None],
    failures: list[str],
) -> int:
    for line in failures:
        print(f"FAILED {line}")
    if failures or not all(s for s in samples):
        return 1
    begin = max(s[0][0] for s in samples) + _WARMUP
    end = min(s[-1][0] for s in samples)
    print()
    windows = []
    t = begin
    while t + _WINDOW <= end + 1e-9:
        windows.append(sum(_rate_between(s, t, t + _WINDOW) for s in samples))
        t += _WINDOW
    total = 0.0
    for i, s in enumerate(samples):
        rate = _rate_between(s, begin, end) if end > begin else 0.0
        total += rate
        print(f"instance {i + 1}: {rate:8,.0f} records/s")
    lost = sum((c or {}).get("lost", 0) for c in closed)
    print(
        f"fleet:      {total:8,.0f} records/s, {total / config.capacity:.1%} of the capacity "
        f"{config.capacity:,.0f}/s (from {_WARMUP:g} s after the last instance started)"
    )
    over = [w for w in windows if w > config.capacity * (1 + _TOLERANCE)]
    if windows:
        shown = ", ".join(f"{w / config.capacity:.1%}" for w in windows)
        print(f"{_WINDOW:g} s windows (fleet / capacity): {shown}")
    else:
        print(f"the run was too short for a {_WINDOW:g} s window: use a longer --duration")
    print(f"lost: {lost}" + ("" if all(closed) else " (an instance did not report its close)"))
    return 0 if lost == 0 and all(closed) and not over else 1
