"""(c) Peak memory under a sink 10x slower than the load: bounded by ``max_pending``?

A producer offers heartbeat records (each made when it is offered, with its own id and
timestamps) at a steady rate to ``AsyncBatcher(sink, key="id", version="updated_at",
max_pending=10_000)`` through ``await batcher.add(record)``; the sink sleeps in proportion to
the batch size, so it takes a tenth of the offered rate. Under ``when_full="block"`` the
producer waits for room; under ``"drop_oldest"`` the oldest pending records make way.

Each run is a fresh child process, with ``tracemalloc`` on from before the batcher is made.
Reported: the peak of traced bytes during the load, the peaks over its first and second
halves, and the growth of the peak resident size (``VmHWM``, the figure ``ru_maxrss`` gives;
it includes tracemalloc's own bookkeeping). When the load stops, the sink is made fast and
the batcher closed; everything it accepted must be committed or dropped. The baseline, in a
child of its own, is ``max_pending`` records made the same way and held in a plain list: what
the data alone costs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import subprocess
import sys
import time
import tracemalloc
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from writebehind._config import WhenFull

from ._common import BenchmarkError, Section, Table, Target, check, fmt_bytes, fmt_ratio

__all__ = ["measure"]

MAX_PENDING = 10_000
OFFERED = 20_000  # records offered per second
SINK_RATE = 2_000  # records per second the sink can write
TICK = 0.01  # seconds between the producer's pacing steps
_REPLICAS = [f"replica-{i}" for i in range(4)]
_ROOT = Path(__file__).resolve().parent.parent  # where `python -m benchmarks...` works


def _record() -> dict[str, Any]:
    ts = datetime.now(UTC).isoformat(timespec="microseconds")
    return {
        "id": str(uuid.uuid4()),
        "first_connected_at": ts,
        "last_connected_at": ts,
        "replica_id": _REPLICAS[0],
        "disconnected_at": None,
        "updated_at": ts,
    }


class _ThrottledSink:
    """Sleeps ``len(batch) / rate`` seconds per write; keeps nothing (unlike ``SlowSink``)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.fast = False
        self.rows = 0

    async def write(self, batch: list[Any]) -> None:
        if not self.fast:
            await asyncio.sleep(len(batch) / self.rate)
        self.rows += len(batch)


def _maxrss_bytes() -> int:
    """This process's peak resident size: ``VmHWM``, else ``ru_maxrss``.

    On Linux ``ru_maxrss`` survives ``fork`` and ``exec``: a child of a large parent (this
    benchmark's, after the hot path) reports the parent's peak. ``VmHWM`` in
    ``/proc/self/status`` is the same high-water mark for this process image alone.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- the child ---------------------------------------------------------------------------


async def _load(policy: WhenFull, duration: float) -> dict[str, Any]:
    import writebehind as wb

    sink = _ThrottledSink(SINK_RATE)
    batcher = wb.AsyncBatcher(
        sink, key="id", version="updated_at", max_pending=MAX_PENDING, when_full=policy
    )
    await batcher.start()
    add = batcher.add
    offered = 0
    max_held = 0
    half_peak = 0
    halfway = False
    full_gcs = gc.get_stats()[2]["collections"]
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= duration:
            break
        if not halfway and elapsed >= duration / 2:
            half_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            halfway = True
        if offered <= elapsed * OFFERED:  # due: offer one more (add() may wait for room)
            await add(_record())
            offered += 1
            if offered % 100:
                continue
        else:
            await asyncio.sleep(TICK)
        s = batcher.stats()
        max_held = max(max_held, s.pending + s.in_flight)
    loaded = time.monotonic() - t0
    full_gcs = gc.get_stats()[2]["collections"] - full_gcs
    current, second_peak = tracemalloc.get_traced_memory()
    rss = _maxrss_bytes()
    gc.collect()
    after_gc = tracemalloc.get_traced_memory()[0]
    sink.fast = True
    report = await batcher.close()
    s = report.stats
    check(
        report.lost == 0 and s.accepted == s.committed + s.coalesced + s.dropped,
        f"memory ({policy}): accepted {s.accepted} != committed {s.committed} + coalesced "
        f"{s.coalesced} + dropped {s.dropped} (lost {report.lost})",
    )
    return {
        "policy": policy,
        "duration": loaded,
        "offered": offered,
        "accepted": s.accepted,
        "committed": s.committed,
        "dropped": s.dropped,
        "max_held": max_held,
        "peak_first_half": half_peak,
        "peak_second_half": second_peak,
        "peak": max(half_peak, second_peak),
        "current_at_end": current,
        "cyclic_garbage_at_end": current - after_gc,
        "maxrss": rss,
        "full_collections": full_gcs,
    }


def _baseline() -> dict[str, Any]:
    before = tracemalloc.get_traced_memory()[0]
    held = [_record() for _ in range(MAX_PENDING)]
    after = tracemalloc.get_traced_memory()[0]
    rss = _maxrss_bytes()
    del held
    return {"bytes": after - before, "maxrss": rss}


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import writebehind  # noqa: F401  imported before the baseline, as the load does

    gc.collect()
    rss0 = _maxrss_bytes()
    tracemalloc.start()
    if spec["kind"] == "baseline":
        out = _baseline()
    else:
        out = asyncio.run(_load(spec["policy"], spec["duration"]))
    out["maxrss_delta"] = out.pop("maxrss") - rss0
    return out


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=_ROOT,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchmarkError(f"memory child {spec} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- the parent --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    policy: str
    duration: float
    r: dict[str, Any]


def measure(quick: bool = False) -> Section:
    short, long = (1.0, 2.0) if quick else (5.0, 10.0)
    started = time.perf_counter()
    base = _spawn({"kind": "baseline"})
    runs = [
        _Run(policy, duration, _spawn({"kind": "load", "policy": policy, "duration": duration}))
        for policy in ("block", "drop_oldest")
        for duration in (short, long)
    ]
    seconds = time.perf_counter() - started
    data_per_record = base["bytes"] / MAX_PENDING
    table = Table(
        "Peak memory, max_pending=10,000",
        [
            "when_full",
            "load",
            "offered",
            "accepted",
            "dropped",
            "most held",
            "peak traced",
            "peak, 1st / 2nd half",
            "per held record",
            "peak RSS growth",
        ],
    )
    for run in runs:
        r = run.r
        table.rows.append(
            [
                f'"{run.policy}"',
                f"{r['duration']:.1f} s",
                f"{r['offered']:,}",
                f"{r['accepted']:,}",
                f"{r['dropped']:,}",
                f"{r['max_held']:,}",
                fmt_bytes(r["peak"]),
                f"{fmt_bytes(r['peak_first_half'])} / {fmt_bytes(r['peak_second_half'])}",
                fmt_bytes(r["peak"] / MAX_PENDING),
                fmt_bytes(r["maxrss_delta"]),
            ]
        )
    table.rows.append(
        [
            "baseline: 10,000 records in a list",
            "-",
            "-",
            "-",
            "-",
            f"{MAX_PENDING:,}",
            fmt_bytes(base["bytes"]),
            "-",
            fmt_bytes(data_per_record),
            fmt_bytes(base["maxrss_delta"]),
        ]
    )
    table.caption = (
        f"Offered {OFFERED:,} records/s; the sink writes {SINK_RATE:,}/s (a sleep of "
        f'len(batch) / {SINK_RATE:,} s per write, max_batch 500, one write at a time). "per '
        'held record" is the peak divided by max_pending. "most held" is the largest '
        "pending + in flight seen (sampled every 100 records and at every 10 ms pause)."
    )
    targets = []
    for policy in ("block", "drop_oldest"):
        a, b = (run for run in runs if run.policy == policy)
        growth = b.r["peak"] / a.r["peak"]
        halves = b.r["peak_second_half"] / b.r["peak_first_half"]
        targets.append(
            Target(
                f'peak memory does not grow with the load\'s duration (when_full="{policy}", '
                f"{b.duration:g} s vs {a.duration:g} s, and 2nd vs 1st half; within 15%)",
                growth <= 1.15 and halves <= 1.15,
                f"{fmt_bytes(b.r['peak'])} vs {fmt_bytes(a.r['peak'])}: {fmt_ratio(growth)}; "
                f"halves {fmt_ratio(halves)}",
            )
        )
    most_held = max(run.r["max_held"] for run in runs)
    targets.append(
        Target(
            "records held (pending + in flight) never exceed max_pending",
            most_held <= MAX_PENDING,
            f"most held {most_held:,} of {MAX_PENDING:,}",
        )
    )
    block_long = next(r for r in runs if r.policy == "block" and r.duration == long)
    drop_long = next(r for r in runs if r.policy == "drop_oldest" and r.duration == long)
    block_short = next(r for r in runs if r.policy == "block" and r.duration == short)
    overhead = block_long.r["peak"] / MAX_PENDING - data_per_record
    notes = [
        f'Per held record, the batcher\'s peak ("block", {long:g} s) is '
        f"{fmt_bytes(block_long.r['peak'] / MAX_PENDING)} against "
        f"{fmt_bytes(data_per_record)} for the record alone: {fmt_bytes(overhead)} of "
        "overhead (its receipt, its slot in the pending dict, the batch lists, and committed "
        "records not yet freed).",
        "Committed batches are reference cycles (`Receipt._batch` -> `Batch`, "
        "`Batch.receipts` -> each `Receipt`), so their receipts, and the records they hold, "
        "are freed only by the cyclic garbage collector, not when the write settles. Under a "
        "slow sink the receipts wait long enough to reach the oldest generation, which is "
        "collected only when it has grown by a quarter; so that garbage grows with the run, "
        f'not with max_pending. At the end of the {long:g} s "block" load, `gc.collect()` '
        f"freed {fmt_bytes(block_long.r['cyclic_garbage_at_end'])} of traced memory "
        f"(after {short:g} s: {fmt_bytes(block_short.r['cyclic_garbage_at_end'])}); "
        f"full collections during the {long:g} s load: {block_long.r['full_collections']}. "
        f'"drop_oldest" at {long:g} s: {fmt_bytes(drop_long.r["cyclic_garbage_at_end"])} '
        f"(full collections: {drop_long.r['full_collections']}). In an application with a "
        "large heap the oldest generation is collected even more rarely.",
        "`writebehind.testing.SlowSink` keeps every batch it is given (it is a `MemorySink`), "
        "so memory under it grows with the run by design; this benchmark uses a sink that "
        "keeps nothing.",
        "Peak RSS growth is the rise of the child's peak resident size (`VmHWM`, what "
        "`ru_maxrss` reports for a process that inherited no larger peak) from just before "
        "tracemalloc starts. `ru_maxrss` itself would not do: Linux carries it over `fork` "
        "and `exec`, so a child reports its parent's peak, here already raised by the "
        "hot-path benchmark. The growth includes tracemalloc's own tables and the "
        "allocator's slack, so it is larger than the traced peak.",
    ]
    planned = round(drop_long.duration * OFFERED)
    if drop_long.r["offered"] < 0.95 * planned:
        notes.insert(
            2,
            f'Under "drop_oldest" the producer offered {drop_long.r["offered"]:,} records in '
            f"{drop_long.r['duration']:.1f} s, short of the {planned:,} planned: making each "
            "record and adding it to a full buffer (each add drops the oldest record; see the "
            "hot path for that cost), under tracemalloc, took longer than the 50 µs a record "
            "that 20,000/s allows.",
        )
    return Section(
        key="memory",
        title="Memory: bounded under a slow sink",
        method=__doc__ or "",
        tables=[table],
        targets=targets,
        notes=notes,
        data={"baseline": base, "runs": [{**run.r, "planned": run.duration} for run in runs]},
        seconds=seconds,
    )


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
