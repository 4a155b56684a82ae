"""What every benchmark shares: result types, record builders, number formatting."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "NullExporter",
    "BenchmarkError",
    "Section",
    "Table",
    "Target",
    "heartbeats",
    "fmt_bytes",
    "fmt_int",
    "fmt_ratio",
    "fmt_s",
    "fmt_us",
    "uuids",
]


class BenchmarkError(AssertionError):
    """A benchmark produced a wrong result (not a slow one): the run must fail loudly."""


@dataclass
class Table:
    """One table of results: ``rows`` are already formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""


@dataclass
class Target:
    """A stated target, whether this run met it, and the figure that says so."""

    claim: str
    met: bool
    figure: str


@dataclass
class Section:
    """What one benchmark module returns to :mod:`benchmarks.run`."""

    key: str
    title: str
    method: str
    """How it was measured (markdown)."""
    tables: list[Table]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    """The raw figures, for anyone who wants more than the tables."""
    seconds: float = 0.0


def check(condition: bool, message: str) -> None:
    """Raise :class:`BenchmarkError` unless ``condition`` (asserts survive ``python -O``)."""
    if not condition:
        raise BenchmarkError(message)


# -- records -------------------------------------------------------------------------------

BASE_TIME = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def uuids(n: int, *, seed: int) -> list[uuid.UUID]:
    """``n`` distinct random (version 4) UUIDs, the same for the same seed."""
    rng = random.Random(seed)
    out = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(n)]
    if len(set(out)) != n:  # pragma: no cover - 2**-122 odds
        raise BenchmarkError("duplicate random UUIDs")
    return out


def iso(t: dt.datetime) -> str:
    """ISO-8601 with microseconds always present, so that text order is time order."""
    return t.isoformat(timespec="microseconds")


def heartbeats(
    agents: int, beats: int, *, interval: float, seed: int = 7
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Heartbeat records for ``agents`` agents, ``beats`` each, round-robin.

    Record ``h * agents + a`` is heartbeat ``h`` of agent ``a``, sent at ``h * interval``
    seconds plus ``a`` microseconds after the base time, so ``updated_at`` rises per agent
    (and overall, while ``agents`` microseconds < ``interval``). Returns the records and each
    agent's newest ``updated_at``, keyed by its id.
    """
    ids = [str(u) for u in uuids(agents, seed=seed)]
    replicas = [str(u) for u in uuids(4, seed=seed + 1)]
    first = iso(BASE_TIME)
    records: list[dict[str, Any]] = []
    for h in range(beats):
        start = BASE_TIME + dt.timedelta(seconds=h * interval)
        for a in range(agents):
            ts = iso(start + dt.timedelta(microseconds=a))
            records.append(
                {
                    "id": ids[a],
                    "first_connected_at": first,
                    "last_connected_at": ts,
                    "replica_id": replicas[a % len(replicas)],
                    "disconnected_at": None,
                    "updated_at": ts,
                }
            )
    newest = {r["id"]: r["updated_at"] for r in records[-agents:]} if beats else {}
    return records, newest


# -- formatting ----------------------------------------------------------------------------


def fmt_us(ns_per_item: float) -> str:
    """Nanoseconds per item as microseconds, 3 significant decimals."""
    return f"{ns_per_item / 1000:.3f}"


def fmt_int(x: float) -> str:
    return f"{round(x):,}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}"


def fmt_bytes(n: float) -> str:
    """Bytes with a binary unit."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class NullExporter:
    """A SpanExporter that does nothing but count."""

    def __init__(self) -> None:
        self.exported = 0
        self.batches = 0

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.exported += len(spans)
        self.batches += 1
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def time_pieces(
    pieces: Sequence[tuple[str, str]], ns: dict[str, Any], number: int
) -> list[tuple[str, float]]:
    """``(label, ns per call)`` for each ``(label, statement)``: the best of 5 ``timeit``
    repeats of ``number`` calls, with ``ns`` as the statements' globals."""
    import timeit

    out = []
    for label, stmt in pieces:
        best = min(timeit.repeat(stmt, globals=ns, number=number, repeat=5))
        out.append((label, best / number * 1e9))
    return out


async def timed_adds(add: Callable[[Any], Any], records: Sequence[Any], chunk: int) -> int:
    """Call ``add`` on every record, ``chunk`` at a time, yielding to the loop between
    chunks (the flusher runs there); the nanoseconds spent inside the calls only."""
    import asyncio
    from time import perf_counter_ns

    spent = 0
    for i in range(0, len(records), chunk):
        part = records[i : i + chunk]
        t0 = perf_counter_ns()
        for r in part:
            add(r)
        spent += perf_counter_ns() - t0
        await asyncio.sleep(0)
    return spent
