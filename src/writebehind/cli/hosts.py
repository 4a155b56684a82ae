"""``writebehind demo --hosts N``: N producer processes and M flusher processes, one Redis
stream between them, one PostgreSQL table behind (docs/scaling.md).

Producers (:mod:`._hosts_worker`) heartbeat their share of the agents as fast as they can
into the stream (a :class:`~writebehind.RedisStreamSink` batcher each, bounded by
``maxlen``); flushers read it as one consumer group (:func:`~writebehind.consume_stream`)
into the table. Every second this prints the producers' rate into the stream, the
flushers' rate into PostgreSQL, and the stream's lag (entries not yet written and
acknowledged). After ``duration`` seconds the producers close; the flushers drain the
stream and are stopped. Exit status 0 when nothing was lost and nothing was left pending.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .._redact import redact_dsn

__all__ = ["HostsConfig", "run_hosts"]

_DRAIN = 60.0  # seconds the flushers get to empty the stream after the producers stop


@dataclass(frozen=True, slots=True, kw_only=True)
class HostsConfig:
    """``demo --hosts``'s settings."""

    producers: int
    flushers: int
    dsn: str
    redis: str = "redis://127.0.0.1:6379/0"
    agents: int = 10_000
    duration: float = 10.0
    table: str = "agent_heartbeats"
    reset: bool = False
    maxlen: int = 200_000
    max_batch: int = 1000


def run_hosts(config: HostsConfig) -> int:
    """Run the demo; 0 if nothing was lost or left pending."""
    return asyncio.run(_main(config))


class _Proc:
    def __init__(self, proc: Any, role: str, index: int) -> None:
        self.proc, self.role, self.index = proc, role, index
        self.samples: list[tuple[float, int]] = []
        self.closed: dict[str, Any] | None = None
        self.failed: str | None = None

    def rate(self, seconds: float) -> float:
        """Records committed per second over the last ``seconds``."""
        s = self.samples
        if len(s) < 2:
            return 0.0
        t_end, c_end = s[-1]
        for t, c in reversed(s):
            if t_end - t >= seconds:
                return (c_end - c) / (t_end - t)
        t0, c0 = s[0]
        return (c_end - c0) / (t_end - t0) if t_end > t0 else 0.0

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            msg = json.loads(line)
            if msg["event"] == "tick":
                self.samples.append((msg["t"], msg["committed"]))
            elif msg["event"] == "closed":
                self.closed = msg
                self.samples.append((msg["t"], msg["committed"]))
            elif msg["event"] == "failed":
                self.failed = msg["error"]


async def _spawn(role: str, index: int, settings: dict[str, Any]) -> _Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "writebehind.cli._hosts_worker",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write((json.dumps({**settings, "role": role, "index": index}) + "\n").encode())
    await proc.stdin.drain()
    if role == "producer":
        proc.stdin.close()  # a flusher's stdin stays open: closing it stops the flusher
    return _Proc(proc, role, index)


async def _lag(client: Any, stream: str, group: str) -> tuple[int, int]:
    """(entries in the stream, entries delivered and not acknowledged)."""
    try:
        length = await client.xlen(stream)
        pending = (await client.xpending(stream, group))["pending"]
    except Exception:  # the group is created by the first flusher
        return -1, -1
    return int(length), int(pending)


async def _main(config: HostsConfig) -> int:
    import redis.asyncio as aioredis

    from ._postgres import PostgresTarget

    target = PostgresTarget(config.dsn, config.table)
    try:
        await target.prepare(reset=config.reset)
    finally:
        await target.close()
    stream, group = f"writebehind-demo-{uuid.uuid4().hex[:8]}", "flushers"
    print(
        f"{config.producers} producer(s) -> Redis stream {stream} -> {config.flushers} "
        f"flusher(s) -> PostgreSQL ({redact_dsn(config.dsn)}, table {config.table}); "
        f"{config.agents:,} agents, {config.duration:g} s",
        flush=True,
    )
    settings = {
        "dsn": config.dsn, "redis": config.redis, "stream": stream, "group": group,
        "table": config.table, "duration": config.duration, "maxlen": config.maxlen,
        "max_batch": config.max_batch,
    }  # fmt: skip
    n = config.producers
    flushers = [await _spawn("flusher", i + 1, settings) for i in range(config.flushers)]
    producers = [
        await _spawn("producer", i + 1, {**settings, "agents": max(1, config.agents // n)})
        for i in range(n)
    ]
    procs = [*producers, *flushers]
    readers = [asyncio.create_task(p.read()) for p in procs]
    client = aioredis.Redis.from_url(config.redis, socket_timeout=5)
    t0 = time.monotonic()
    try:
        while True:
            await asyncio.sleep(1.0)
            length, pending = await _lag(client, stream, group)
            into_stream = sum(p.rate(1.0) for p in producers)
            into_pg = sum(p.rate(1.0) for p in flushers)
            each = " ".join(f"{p.rate(1.0):7,.0f}" for p in flushers)
            print(
                f"t={time.monotonic() - t0:5.1f}s  producers {into_stream:9,.0f}/s -> stream "
                f"(lag {length:8,} entries, {pending:6,} being written) -> flushers "
                f"{into_pg:9,.0f}/s [{each}]",
                flush=True,
            )
            if all(p.closed or p.failed for p in producers):
                if length == 0 and pending == 0:
                    break
                if any(p.failed for p in flushers) or time.monotonic() - t0 > (
                    config.duration + _DRAIN
                ):
                    break
        for p in flushers:
            assert p.proc.stdin is not None
            p.proc.stdin.close()
        await asyncio.wait_for(asyncio.gather(*readers), 30)
        final = await _lag(client, stream, group)
    finally:
        for p in procs:
            if p.proc.returncode is None:
                p.proc.kill()
            await p.proc.wait()
        await client.delete(stream)
        await client.aclose()
    return _summary(config, producers, flushers, final)


def _summary(
    config: HostsConfig, producers: list[_Proc], flushers: list[_Proc], final: tuple[int, int]
) -> int:
    print()
    failed = [f"{p.role} {p.index}: {p.failed}" for p in (*producers, *flushers) if p.failed]
    for line in failed:
        print(f"FAILED {line}")
    lost = 0
    for p in (*producers, *flushers):
        c = p.closed or {}
        lost += c.get("lost", 0)
        span = p.samples[-1][0] - p.samples[0][0] if len(p.samples) > 1 else 0.0
        mean = (p.samples[-1][1] / span) if span > 0 else 0.0
        extra = (
            f", {c.get('claimed', 0):,} claimed, {c.get('left_pending', 0):,} left pending"
            if p.role == "flusher"
            else f", {c.get('coalesced', 0):,} coalesced before the stream"
        )
        print(f"{p.role} {p.index}: {c.get('committed', 0):>10,} committed, {mean:9,.0f}/s{extra}")
    into_stream = sum((p.closed or {}).get("committed", 0) for p in producers)
    written = sum((p.closed or {}).get("committed", 0) for p in flushers)
    print(
        f"into the stream: {into_stream:,}; written to PostgreSQL: {written:,} (the rest "
        f"coalesced in the flushers); stream left: {final[0]} entries, {final[1]} pending; "
        f"lost: {lost}"
    )
    ok = not failed and lost == 0 and final == (0, 0) and all(p.closed for p in flushers)
    return 0 if ok else 1
