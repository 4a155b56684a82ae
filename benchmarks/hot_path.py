"""(a) The hot path: what one ``add()`` costs, against the hand-offs it competes with.

Every variant hands the same records over in chunks of 500, and between chunks lets the
consumer run (``await asyncio.sleep(0)`` on an event loop; a short pause in a thread until
there is room for the next chunk), so batches flush as they do in real use. Two figures per
variant:

- **per call**: only the hand-off calls are timed (``perf_counter_ns`` around each chunk).
  On the event loop every consumer does its work in the untimed gaps between chunks, on the
  same thread: the batcher's flusher, the queue's consumer task, and OpenTelemetry's
  ``BatchSpanProcessor``, whose export is run there too (``force_flush()`` between chunks,
  with its worker thread kept idle: no size or time trigger fires during a run). With its
  default worker thread instead, the export competes for the GIL inside the timed chunks
  while the batcher's flusher never does; that row is kept for information only.
- **end to end**: the whole run per record, from the first hand-off until everything handed
  over was delivered (the batcher closed, every record committed; the queue's consumer
  done; every span exported): the calls, the gaps and the consumer's work, whoever does it.

Each figure is the minimum of several interleaved repeats (the caption says how many), with
the garbage collector enabled (real life) and, for information, disabled.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import operator
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

import writebehind as wb
from writebehind._config import WhenFull
from writebehind.testing import MemorySink

from ._common import (
    BASE_TIME,
    BenchmarkError,
    NullExporter,
    Section,
    Table,
    Target,
    check,
    fmt_ratio,
    fmt_us,
    iso,
    time_pieces,
    uuids,
)
from ._hand_intake import HandIntake, consume

__all__ = ["measure"]

CHUNK = 500  # records between two yields to the consumer; = max_batch
MAX_PENDING = 5 * CHUNK  # the batcher's default max_pending, and the queues' maxsize
SPAN_POOL = 10_000  # distinct pre-ended spans, cycled
_STOP = object()


@dataclass(frozen=True)
class Run:
    add_ns: int
    """Nanoseconds spent inside the hand-off calls."""
    loop_ns: int
    """Nanoseconds from the first hand-off until everything was delivered (hand-offs,
    yields, the consumer's work, the final drain)."""
    n: int


Records = list[dict[str, Any]]


def _records(n: int) -> Records:
    ids = uuids(n, seed=11)
    replica = str(uuids(1, seed=12)[0])
    first = iso(BASE_TIME)
    return [
        {
            "id": ids[i],  # a uuid.UUID, as the brief asks
            "first_connected_at": first,
            "last_connected_at": first,
            "replica_id": replica,
            "disconnected_at": None,
            "updated_at": f"2024-01-01T00:00:00.{i:06d}+00:00",
        }
        for i in range(n)
    ]


def _check_batcher(batcher: wb.AsyncBatcher, sink: MemorySink, n: int, what: str) -> None:
    s = batcher.stats()
    got = sum(len(b) for b in sink.batches)
    check(
        s.accepted == n and s.committed == n and got == n and s.lost == 0,
        f"{what}: accepted {s.accepted}, committed {s.committed}, sink got {got}, lost "
        f"{s.lost}; expected {n} each (lost 0)",
    )


# -- asyncio variants ----------------------------------------------------------------------


async def _timed_chunks(
    records: Records, call: Any, *, awaited: bool, start: int
) -> tuple[int, int]:
    """Hand ``records`` to ``call`` in chunks of CHUNK, yielding to the loop between chunks
    (so the consumer runs, as in real use); time only the calls. Returns (call ns, loop ns
    since ``start``). The inner loops are the same for every hand-off: like for like."""
    add_ns = 0
    for i in range(0, len(records), CHUNK):
        part = records[i : i + CHUNK]
        t0 = perf_counter_ns()
        if awaited:
            for r in part:
                await call(r)
        else:
            for r in part:
                call(r)
        add_ns += perf_counter_ns() - t0
        await asyncio.sleep(0)
    return add_ns, perf_counter_ns() - start


async def _batcher_async(records: Records, *, nowait: bool) -> Run:
    sink = MemorySink()
    batcher = wb.AsyncBatcher(sink, key="id", version="updated_at")
    await batcher.start()
    n = len(records)
    call = batcher.add_nowait if nowait else batcher.add
    start = perf_counter_ns()
    add_ns, _ = await _timed_chunks(records, call, awaited=not nowait, start=start)
    await batcher.close()  # every record committed
    loop_ns = perf_counter_ns() - start
    _check_batcher(batcher, sink, n, "AsyncBatcher.add" + ("_nowait" if nowait else ""))
    return Run(add_ns, loop_ns, n)


async def _batcher_many(records: Records) -> Run:
    """``add_many_nowait`` with each chunk as one group: a producer that holds a list."""
    sink = MemorySink()
    batcher = wb.AsyncBatcher(sink, key="id", version="updated_at")
    await batcher.start()
    n = len(records)
    add_ns = 0
    start = perf_counter_ns()
    for i in range(0, n, CHUNK):
        part = records[i : i + CHUNK]
        t0 = perf_counter_ns()
        batcher.add_many_nowait(part)
        add_ns += perf_counter_ns() - t0
        await asyncio.sleep(0)
    await batcher.close()
    _check_batcher(batcher, sink, n, "AsyncBatcher.add_many_nowait")
    return Run(add_ns, perf_counter_ns() - start, n)


async def _hand_intake(records: Records) -> Run:
    """The hand-written intake with ``add_nowait``'s guarantees (``_hand_intake``), its
    consumer cutting batches between chunks as the batcher's flusher does."""
    due, done = asyncio.Event(), asyncio.Event()
    intake = HandIntake("id", "updated_at", CHUNK, MAX_PENDING, due.set)
    consumer = asyncio.create_task(consume(intake, due, done))
    n = len(records)
    start = perf_counter_ns()
    add_ns, _ = await _timed_chunks(records, intake.put_nowait, awaited=False, start=start)
    done.set()
    due.set()
    await consumer
    loop_ns = perf_counter_ns() - start
    accepted, coalesced, committed, _ = intake.counts
    check(
        accepted == n and committed + coalesced == n,
        f"hand-written intake: accepted {accepted}, committed {committed}, coalesced "
        f"{coalesced}; expected {n} accepted, all committed or coalesced",
    )
    return Run(add_ns, loop_ns, n)


async def _asyncio_queue(records: Records, *, nowait: bool) -> Run:
    q: asyncio.Queue[Any] = asyncio.Queue(maxsize=MAX_PENDING)
    batches: list[list[Any]] = []

    async def consume() -> None:  # drains up to CHUNK items each time it runs: the flusher
        while True:
            batch = [await q.get()]
            while len(batch) < CHUNK:
                try:
                    batch.append(q.get_nowait())
                except asyncio.QueueEmpty:
                    break
            if batch[-1] is _STOP:
                batches.append(batch[:-1])
                return
            batches.append(batch)

    consumer = asyncio.create_task(consume())
    n = len(records)
    call = q.put_nowait if nowait else q.put
    start = perf_counter_ns()
    add_ns, _ = await _timed_chunks(records, call, awaited=not nowait, start=start)
    await q.put(_STOP)
    await consumer
    loop_ns = perf_counter_ns() - start
    got = sum(len(b) for b in batches)
    check(got == n, f"asyncio.Queue: the consumer got {got} items, expected {n}")
    return Run(add_ns, loop_ns, n)


def _otel_spans(n: int) -> list[Any]:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("writebehind-benchmarks")
    spans = []
    for i in range(n):
        span = tracer.start_span("heartbeat", attributes={"agent": i})
        span.end()
        spans.append(span)
    return spans


async def _otel_on_end(spans: list[Any], n: int, *, in_gaps: bool) -> Run:
    """``in_gaps``: the export runs between chunks on this thread (``force_flush``), where
    the batcher's flusher runs; the worker thread is idle (no size or time trigger can fire
    during the run). Otherwise the SDK's worker thread exports on its own triggers."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = NullExporter()
    # A queue that holds every span: the drop path (which logs a warning per span) is not
    # what is being compared. Other settings are the SDK's defaults, except, in_gaps, the
    # worker's triggers.
    idle: dict[str, Any] = {}
    if in_gaps:
        idle = {"max_export_batch_size": n + 1, "schedule_delay_millis": 1e9}
    processor = BatchSpanProcessor(exporter, max_queue_size=n + 1, **idle)  # type: ignore[arg-type]
    on_end = processor.on_end
    flush = processor.force_flush
    pool = len(spans)
    add_ns = 0
    start = perf_counter_ns()
    for i in range(0, n, CHUNK):
        j = i % pool
        part = spans[j : j + CHUNK]
        t0 = perf_counter_ns()
        for s in part:
            on_end(s)
        add_ns += perf_counter_ns() - t0
        if in_gaps:
            flush()
        await asyncio.sleep(0)
    processor.shutdown()  # type: ignore[no-untyped-call]  # exports what is left
    loop_ns = perf_counter_ns() - start
    check(exporter.exported == n, f"OTel: exported {exporter.exported} spans, expected {n}")
    check(not in_gaps or exporter.batches == -(-n // CHUNK), f"OTel: {exporter.batches} "
          "exports, expected one per chunk (the worker thread must stay idle)")  # fmt: skip
    return Run(add_ns, loop_ns, n)


# -- thread variants -----------------------------------------------------------------------


def _pause_for_room(held: Callable[[], int], what: str) -> None:
    """Between chunks: let the consumer thread run until the next chunk fits."""
    time.sleep(0)
    deadline = time.monotonic() + 30
    while held() > MAX_PENDING - CHUNK:
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{what}: no room for the next chunk within 30 s")
        time.sleep(50e-6)


def _batcher_thread(records: Records, *, blocking: bool) -> Run:
    sink = MemorySink()
    n = len(records)
    add_ns = 0
    with wb.Batcher(sink, key="id", version="updated_at") as batcher:
        add = batcher.add if blocking else batcher.add_nowait

        def held() -> int:
            s = batcher.stats()
            return s.pending + s.in_flight

        start = perf_counter_ns()
        for i in range(0, n, CHUNK):
            part = records[i : i + CHUNK]
            t0 = perf_counter_ns()
            for r in part:
                add(r)
            add_ns += perf_counter_ns() - t0
            _pause_for_room(held, "Batcher")
    loop_ns = perf_counter_ns() - start  # closed: every record committed
    _check_batcher(batcher.engine, sink, n, "Batcher.add" + ("" if blocking else "_nowait"))
    return Run(add_ns, loop_ns, n)


def _thread_queue(records: Records) -> Run:
    q: queue.Queue[Any] = queue.Queue(maxsize=MAX_PENDING)
    got = 0

    def consume() -> None:
        nonlocal got
        while True:
            batch = [q.get()]
            while len(batch) < CHUNK:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _STOP:
                got += len(batch) - 1
                return
            got += len(batch)

    consumer = threading.Thread(target=consume, name="bench-queue-consumer")
    consumer.start()
    n = len(records)
    add_ns = 0
    put = q.put
    start = perf_counter_ns()
    for i in range(0, n, CHUNK):
        part = records[i : i + CHUNK]
        t0 = perf_counter_ns()
        for r in part:
            put(r)
        add_ns += perf_counter_ns() - t0
        _pause_for_room(q.qsize, "queue.Queue")
    q.put(_STOP)
    consumer.join()
    loop_ns = perf_counter_ns() - start
    check(got == n, f"queue.Queue: the consumer got {got} items, expected {n}")
    return Run(add_ns, loop_ns, n)


# -- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    run: Callable[[], Run]


def _variants(records: Records, spans: list[Any]) -> list[Variant]:
    n = len(records)
    return [
        Variant(
            "add_nowait",
            "`AsyncBatcher.add_nowait`",
            lambda: asyncio.run(_batcher_async(records, nowait=True)),
        ),
        Variant(
            "add",
            "`await AsyncBatcher.add`",
            lambda: asyncio.run(_batcher_async(records, nowait=False)),
        ),
        Variant(
            "add_many",
            f"`AsyncBatcher.add_many_nowait`, groups of {CHUNK}",
            lambda: asyncio.run(_batcher_many(records)),
        ),
        Variant(
            "hand",
            "a hand-written intake with the same guarantees (baseline: `_hand_intake.py`)",
            lambda: asyncio.run(_hand_intake(records)),
        ),
        Variant(
            "put_nowait",
            "`asyncio.Queue.put_nowait` (baseline)",
            lambda: asyncio.run(_asyncio_queue(records, nowait=True)),
        ),
        Variant(
            "put",
            "`await asyncio.Queue.put` (baseline)",
            lambda: asyncio.run(_asyncio_queue(records, nowait=False)),
        ),
        Variant(
            "otel",
            "OTel `BatchSpanProcessor.on_end` (baseline; export between chunks)",
            lambda: asyncio.run(_otel_on_end(spans, n, in_gaps=True)),
        ),
        Variant(
            "otel_thread",
            "OTel `BatchSpanProcessor.on_end`, export on its worker thread (info)",
            lambda: asyncio.run(_otel_on_end(spans, n, in_gaps=False)),
        ),
        Variant(
            "sync_add_nowait",
            "`Batcher.add_nowait` (from a thread)",
            lambda: _batcher_thread(records, blocking=False),
        ),
        Variant(
            "sync_add",
            "`Batcher.add` (from a thread)",
            lambda: _batcher_thread(records, blocking=True),
        ),
        Variant(
            "queue_put",
            "`queue.Queue.put` (from a thread; baseline)",
            lambda: _thread_queue(records),
        ),
    ]


def _timed(fn: Callable[[], Run], *, gc_on: bool) -> Run:
    gc.collect()
    if not gc_on:
        gc.disable()
    try:
        return fn()
    finally:
        gc.enable()


def _components(records: Records) -> list[tuple[str, float]]:
    """What the pieces of one ``add_nowait`` cost alone (ns each, min of 5)."""
    from writebehind._receipt import Receipt  # private: only to explain the figure

    params = list(inspect.signature(Receipt).parameters)  # (record, version[, intake])

    rec = records[0]
    u = rec["id"]
    lock = threading.Lock()
    ns: dict[str, Any] = {
        "Receipt": Receipt,
        "rec": rec,
        "kget": operator.itemgetter("id"),
        "vget": operator.itemgetter("updated_at"),
        "acq": lock.acquire,
        "rel": lock.release,
        "d": {},
        "u": u,
        "UUID": uuid.UUID,
        "q": asyncio.Queue(),
    }
    pieces = [
        ("two `itemgetter` calls (key, version)", "kget(rec); vget(rec)"),
        ("`type(k) is UUID` and `k.int`", "type(u) is UUID and u.int"),
        (f"`Receipt({', '.join(params)})`", f"Receipt(rec, 'v'{', None' * (len(params) - 2)})"),
        ("`lock.acquire()` + `lock.release()`", "acq(); rel()"),
        ("`dict.get` + `dict[k] = r` (int key)", "d.get(12345); d[12345] = rec"),
        ("`hash(uuid.UUID)` (what `k.int` avoids)", "hash(u)"),
    ]
    return time_pieces(pieces, ns, 200_000)


def _cyclic_garbage_per_record(records: Records) -> float:
    """Objects the cyclic GC (not reference counting) must free, per record added."""
    gc.collect()
    gc.disable()
    try:
        asyncio.run(_batcher_async(records, nowait=True))
        return gc.collect() / len(records)
    finally:
        gc.enable()


class _GatedSink:
    """Holds every write until ``gate`` (a ``threading.Event``) is set; keeps nothing."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.rows = 0

    async def write(self, batch: list[Any]) -> None:
        await asyncio.to_thread(self.gate.wait)
        self.rows += len(batch)


def _check_dropped(stats: wb.Stats, n: int, what: str) -> None:
    check(stats.dropped == n, f"full buffer ({what}): dropped {stats.dropped}, expected {n}")


async def _full_buffer(records: Records, policy: WhenFull, max_pending: int) -> float:
    """``add_nowait`` per record (ns) once the buffer is full and the sink does not answer."""
    sink = _GatedSink()
    batcher = wb.AsyncBatcher(
        sink, key="id", version="updated_at", max_pending=max_pending, when_full=policy
    )
    await batcher.start()
    add_nowait = batcher.add_nowait
    for i in range(0, max_pending, CHUNK):  # fill it: one batch in flight, the rest pending
        for r in records[i : i + CHUNK]:
            add_nowait(r)
        await asyncio.sleep(0)
    s = batcher.stats()
    check(s.pending + s.in_flight == max_pending, f"full buffer ({policy}): not full: {s}")
    add_ns = 0
    n = len(records) - max_pending
    for i in range(max_pending, len(records), CHUNK):
        part = records[i : i + CHUNK]
        t0 = perf_counter_ns()
        for r in part:
            add_nowait(r)
        add_ns += perf_counter_ns() - t0
        await asyncio.sleep(0)
    _check_dropped(batcher.stats(), n, policy)
    sink.gate.set()
    report = await batcher.close()
    check(report.lost == 0, f"full buffer ({policy}): lost {report.lost}")
    return add_ns / n


def _full_buffer_thread(records: Records, policy: WhenFull, max_pending: int) -> float:
    """The same through ``Batcher.add_nowait``, from this (non-loop) thread."""
    sink = _GatedSink()
    n = len(records) - max_pending
    add_ns = 0
    with wb.Batcher(
        sink, key="id", version="updated_at", max_pending=max_pending, when_full=policy
    ) as batcher:
        add_nowait = batcher.add_nowait
        for r in records[:max_pending]:
            add_nowait(r)
        deadline = time.monotonic() + 30
        while batcher.stats().in_flight < CHUNK:  # the flusher cut its first batch
            if time.monotonic() > deadline:
                raise BenchmarkError(f"full buffer ({policy}, thread): no batch cut in 30 s")
            time.sleep(0.001)
        for i in range(max_pending, len(records), CHUNK):
            part = records[i : i + CHUNK]
            t0 = perf_counter_ns()
            for r in part:
                add_nowait(r)
            add_ns += perf_counter_ns() - t0
        _check_dropped(batcher.stats(), n, f"{policy}, thread")
        sink.gate.set()
    check(batcher.close().lost == 0, f"full buffer ({policy}, thread): records lost")
    return add_ns / n


def _full_buffer_table(records: Records, quick: bool) -> tuple[Table, dict[str, float]]:
    sizes = (10_000,) if quick else (10_000, 100_000)
    extra = 10_000 if quick else 50_000
    policies: tuple[WhenFull, ...] = ("drop_newest", "drop_oldest")
    log = logging.getLogger("writebehind")
    level = log.level
    log.setLevel(logging.ERROR)  # the rate-limited "buffer full" warnings
    out: dict[str, float] = {}
    try:
        for max_pending in sizes:
            part = records[: max_pending + extra]
            for policy in policies:
                gc.collect()
                out[f"{policy} {max_pending}"] = asyncio.run(
                    _full_buffer(part, policy, max_pending)
                )
                gc.collect()
                out[f"{policy} {max_pending} thread"] = _full_buffer_thread(
                    part, policy, max_pending
                )
    finally:
        log.setLevel(level)
    table = Table(
        "add_nowait on a full buffer (the sink does not answer)",
        [
            "max_pending",
            "`drop_newest`, on the loop",
            "`drop_oldest`, on the loop",
            "`drop_newest`, `Batcher` from a thread",
            "`drop_oldest`, `Batcher` from a thread",
        ],
    )
    for m in sizes:
        table.rows.append(
            [f"{m:,}"] + [fmt_us(out[f"{p} {m}{t}"]) for t in ("", " thread") for p in policies]
        )
    table.caption = (
        f"µs per record. The buffer is filled to max_pending (one batch of {CHUNK} in flight, "
        f"held by a sink that does not answer), then {extra:,} more records are added, each "
        "dropping one; GC on, one run each."
    )
    return table, out


def measure(quick: bool = False) -> Section:
    n = 20_000 if quick else 200_000
    repeats = 2 if quick else 5
    records = _records(n)
    spans = _otel_spans(min(SPAN_POOL, n))
    variants = _variants(records, spans)
    best: dict[tuple[str, bool], Run] = {}
    best_e2e: dict[str, Run] = {}  # the best end-to-end run (GC on), chosen on its own
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        for v in variants:
            for gc_on in (True, False):
                r = _timed(v.run, gc_on=gc_on)
                old = best.get((v.key, gc_on))
                if old is None or r.add_ns < old.add_ns:
                    best[(v.key, gc_on)] = r
                if gc_on and (v.key not in best_e2e or r.loop_ns < best_e2e[v.key].loop_ns):
                    best_e2e[v.key] = r

    def per(key: str, gc_on: bool = True) -> float:
        r = best[(key, gc_on)]
        return r.add_ns / r.n

    def loop_per(key: str) -> float:
        r = best_e2e[key]
        return r.loop_ns / r.n

    base, otel = per("put_nowait"), per("otel")
    base_e2e, otel_e2e = loop_per("put_nowait"), loop_per("otel")
    table = Table(
        "add() cost per record",
        [
            "hand-off",
            "per call µs/record, GC on",
            "vs `put_nowait`",
            "vs OTel `on_end`",
            "per call, GC off",
            "end to end µs/record (GC on)",
            "vs `put_nowait`",
            "vs OTel `on_end`",
        ],
    )
    for v in variants:
        table.rows.append(
            [
                v.label,
                fmt_us(per(v.key)),
                fmt_ratio(per(v.key) / base),
                fmt_ratio(per(v.key) / otel),
                fmt_us(per(v.key, False)),
                fmt_us(loop_per(v.key)),
                fmt_ratio(loop_per(v.key) / base_e2e),
                fmt_ratio(loop_per(v.key) / otel_e2e),
            ]
        )
    table.caption = (
        f"{n:,} records (distinct `uuid.UUID` keys), chunks of {CHUNK}, min of {repeats} "
        "interleaved repeats for each figure. Per call: the hand-off calls only, every "
        "asyncio consumer (flusher, queue consumer task, OTel's export) working between "
        "chunks, on the same thread. End to end: from the first hand-off until everything "
        "was delivered (committed, consumed, exported), per record."
    )

    components = _components(records)
    comp = Table("Where one add_nowait's time goes (each piece alone)", ["piece", "ns"])
    for label, ns in components:
        comp.rows.append([label, f"{ns:.0f}"])
    garbage = _cyclic_garbage_per_record(records[: min(n, 20_000)])
    full_table, full = _full_buffer_table(records, quick)

    targets = []
    for key, what in (("add_nowait", "`add_nowait`"), ("add", "`await add`")):
        x = per(key)
        targets.append(
            Target(
                f"{what} costs no more than 2x `asyncio.Queue.put_nowait` (GC on)",
                x <= 2 * base,
                f"{fmt_us(x)} µs vs {fmt_us(base)} µs: {fmt_ratio(x / base)}",
            )
        )
        targets.append(
            Target(
                f"{what} costs less than OTel's `BatchSpanProcessor.on_end` (GC on)",
                x < otel,
                f"{fmt_us(x)} µs vs {fmt_us(otel)} µs: {fmt_ratio(x / otel)}",
            )
        )
        e = loop_per(key)
        targets.append(
            Target(
                f"{what} end to end (the call and the delivery) costs less than OTel's "
                "`on_end` end to end (GC on)",
                e < otel_e2e,
                f"{fmt_us(e)} µs vs {fmt_us(otel_e2e)} µs: {fmt_ratio(e / otel_e2e)}",
            )
        )

    hand = per("hand")
    targets.append(
        Target(
            "`add_nowait` costs at most 1.15x a hand-written intake with the same guarantees "
            "(GC on)",
            per("add_nowait") <= 1.15 * hand,
            f"{fmt_us(per('add_nowait'))} µs vs {fmt_us(hand)} µs: "
            f"{fmt_ratio(per('add_nowait') / hand)}",
        )
    )
    many = per("add_many")
    targets.append(
        Target(
            f"`add_many_nowait` (groups of {CHUNK}) costs at most 0.5x `add_nowait` per record",
            many <= 0.5 * per("add_nowait"),
            f"{fmt_us(many)} µs vs {fmt_us(per('add_nowait'))} µs: "
            f"{fmt_ratio(many / per('add_nowait'))}",
        )
    )
    gc_tax = per("add_nowait") - per("add_nowait", False)
    pieces = sum(ns for label, ns in components if "what `k.int` avoids" not in label)
    notes = [
        f"Each record added leaves {garbage:.2f} objects that only the cyclic garbage "
        "collector can free (measured with the collector off, then `gc.collect()`): a "
        "`Receipt` refers to its `Batch` (`Receipt._batch`) and the batch to its receipts "
        "(`Batch.receipts`), so a committed batch is a reference cycle and its receipts, and "
        "through them the records, outlive the write until the next collection. With the "
        f"collector on, `add_nowait` cost {fmt_us(per('add_nowait'))} µs against "
        f"{fmt_us(per('add_nowait', False))} µs with it off ({gc_tax / 1000:+.3f} µs); "
        f"`put_nowait` {fmt_us(per('put_nowait'))} against "
        f"{fmt_us(per('put_nowait', False))} µs.",
        "Under `drop_oldest`, an add to a full buffer finds the oldest pending record with "
        "`next(iter(self._pending))` (`Intake._full`), which walks over the empty slots that "
        "earlier drops left at the front of the dict until the dict is next rebuilt; so its "
        "cost grows with max_pending: "
        + ", ".join(
            f"{fmt_us(full[f'drop_oldest {m}'])} µs at max_pending={m:,} (`drop_newest`: "
            f"{fmt_us(full[f'drop_newest {m}'])} µs)"
            for m in sorted({int(k.split()[1]) for k in full})
        )
        + ". From a thread it also wakes the event loop for every dropped record "
        "(`self._call_in_loop(self._notify_change)`, a `call_soon_threadsafe` per record): "
        + ", ".join(
            f"{fmt_us(full[f'drop_oldest {m} thread'])} µs at max_pending={m:,}"
            for m in sorted({int(k.split()[1]) for k in full})
        )
        + ".",
        f"The pieces in the second table add up to {pieces:.0f} ns, against "
        f"{per('add_nowait', False):.0f} ns for `add_nowait` with the collector off; the "
        "rest is the Python-level call and frame of `Intake.put_nowait` itself, its "
        "`try`/`finally` blocks and counter updates, and cache misses on "
        f"{n:,} distinct records (the pieces are timed on one hot record).",
        "OTel's `BatchSpanProcessor` runs with `max_queue_size` large enough to hold every "
        "span; with its default queue of 2,048, spans offered this fast overflow it, and "
        "each dropped span logs a warning, which times the drop path rather than the "
        "hand-off. Its exporter does nothing. In the baseline row its export runs between "
        "chunks, like the batcher's flusher (`force_flush()`; `max_export_batch_size` and "
        "`schedule_delay_millis` set so that the worker thread never wakes during a run, "
        "checked: one export per chunk). In the info row the worker thread exports on the "
        "SDK's default triggers (512 spans, 5 s) and competes for the GIL inside the timed "
        f"calls: {fmt_us(per('otel_thread'))} µs per call against "
        f"{fmt_us(per('otel'))} µs; end to end {fmt_us(loop_per('otel_thread'))} against "
        f"{fmt_us(loop_per('otel'))} µs.",
        f"The OTel figure cycles through {len(spans):,} distinct ended spans; the other "
        "hand-offs take distinct records.",
        "The thread variants (`Batcher`, `queue.Queue`) pause between chunks until the next "
        "chunk fits (`time.sleep(0)`, then 50 µs naps), so `add_nowait` never meets a full "
        "buffer and `add` never blocks; what is timed is the call, not the wait for room. "
        "The event loop (or consumer thread) competes with the producer for the GIL during "
        "the timed chunks, as it does in real use.",
        "`await add()` gives the event loop a turn once per 128 records while a batch is "
        "being written (`AsyncBatcher._give_turn`), so in the `await add` rows part of the "
        "flusher's cut and write runs inside the timed calls instead of in the untimed "
        "gaps between chunks; a tight loop's CPU per record changed by 1.005x with it "
        "(interleaved, 15 rounds), the timed calls' wall time more.",
    ]
    return Section(
        key="hot_path",
        title="Hot path: the cost of add()",
        method=__doc__ or "",
        tables=[table, comp, full_table],
        targets=targets,
        notes=notes,
        data={
            "records": n,
            "repeats": repeats,
            "ns_per_record": {
                f"{k}{'' if g else ' (gc off)'}": r.add_ns / r.n for (k, g), r in best.items()
            },
            "end_to_end_ns_per_record": {k: r.loop_ns / r.n for k, r in best_e2e.items()},
            "components_ns": dict(components),
            "cyclic_garbage_objects_per_record": garbage,
            "full_buffer_ns_per_record": full,
        },
    )
