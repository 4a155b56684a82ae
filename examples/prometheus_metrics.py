"""Expose a batcher's metrics to Prometheus, and print one scrape.

Run: python examples/prometheus_metrics.py  (needs ``pip install 'writebehind[prometheus]'``)

A batcher writes 2,000 heartbeats (100 agents, so most coalesce) to an in-memory sink whose
first write fails (retried) and which refuses one poison record (split off, dead-lettered
into a SQLite store whose count() the collector refreshes in the background).
A ``PrometheusCollector`` watches it, with one refresher of our own (constructing it starts
nothing; ``with``, or ``collector.start()``, starts the background refresh thread); the
script prints the exposition a Prometheus server would scrape. In a service, serve the
registry instead: ``prometheus_client.start_http_server(9464, addr="127.0.0.1")`` (see
docs/observability.md for FastAPI and aiohttp).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

import writebehind as wb
from writebehind.integrations.prometheus import PrometheusCollector
from writebehind.testing import FlakySink


async def main() -> None:
    sink = FlakySink(fail_first=1, poison=lambda r: r["beat"] == 1950)
    registry = CollectorRegistry()  # or leave it out: prometheus_client.REGISTRY
    retry = wb.RetryPolicy(base=0.01, cap=0.05)
    tmp = tempfile.TemporaryDirectory()
    dead_letters = Path(tmp.name) / "dead_letters.db"  # a SQLite dead-letter store
    async with wb.AsyncBatcher(
        sink, key="agent", version="beat", max_batch=250, linger=0.05, retry=retry,
        name="heartbeats", dead_letter=dead_letters,
    ) as batcher:  # fmt: skip
        with PrometheusCollector(
            batcher, registry=registry, refreshers={"app_agents_known": lambda: 100.0}
        ) as collector:  # registered at construction; ``with`` starts its refresh thread
            for beat in range(2000):
                await batcher.add({"agent": beat % 100, "beat": beat})
            await batcher.flush()
            await asyncio.to_thread(collector.refresh)  # normally every refresh_interval
            print(generate_latest(registry).decode())
    print(batcher.stats())
    tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
