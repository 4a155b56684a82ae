"""Many producer threads: does the intake lock convoy?

``Batcher.add_nowait`` from 1 thread and from 4 threads (the same 200,000 records with
distinct ``uuid.UUID`` keys, split evenly), into a ``MemorySink`` with room for every record
(``max_pending`` above the load), so nothing waits for room: what is timed is the hand-off
and the flusher's work on its own thread, wall clock from a barrier until the last thread
is done. With the GIL, 4 threads cannot go faster than 1; what this shows is whether they
go much slower (a lock convoy: the GIL handed over while the intake lock is held, the other
threads piling up on it). Baselines, from 1 and 4 threads: the hand-written intake with the
same guarantees (``benchmarks/_hand_intake.py``, its consumer on a thread of its own), and a
plain ``threading.Lock`` around a dict insert. Best of 5 interleaved rounds.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import writebehind as wb
from writebehind.testing import MemorySink

from ._common import Section, Table, Target, check, fmt_ratio
from ._hand_intake import HandIntake

__all__ = ["measure"]

THREADS = (1, 4)


def _records(n: int) -> list[dict[str, Any]]:
    return [{"id": uuid.uuid4(), "v": i, "status": "up"} for i in range(n)]


def _timed(threads: int, records: list[dict[str, Any]], add: Callable[[Any], Any]) -> float:
    parts = [records[i::threads] for i in range(threads)]
    go = threading.Barrier(threads + 1)

    def work(part: list[dict[str, Any]]) -> None:
        go.wait()
        for r in part:
            add(r)

    workers = [threading.Thread(target=work, args=(p,)) for p in parts]
    for w in workers:
        w.start()
    go.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return (time.perf_counter() - t0) / len(records) * 1e9


def _batcher(threads: int, records: list[dict[str, Any]]) -> float:
    sink = MemorySink()
    n = len(records)
    with wb.Batcher(sink, key="id", version="v", max_pending=n + 1000) as b:
        ns = _timed(threads, records, b.add_nowait)
    s = b.stats()
    check(s.committed == n and s.lost == 0, f"{threads} threads: committed {s.committed} of {n}")
    return ns


def _hand(threads: int, records: list[dict[str, Any]]) -> float:
    """The hand-written intake with the same guarantees (``_hand_intake``), its consumer on
    a thread of its own (the batcher's flusher runs on its loop's thread)."""
    n = len(records)
    due, stop = threading.Event(), threading.Event()
    intake = HandIntake("id", "v", 500, n + 1000, due.set)

    def consume() -> None:
        while True:
            due.wait()
            due.clear()
            while intake.cut():
                pass
            if stop.is_set() and not intake.pending:
                return

    consumer = threading.Thread(target=consume)
    consumer.start()
    ns = _timed(threads, records, intake.put_nowait)
    stop.set()
    due.set()
    consumer.join()
    accepted, _, committed, _ = intake.counts
    check(accepted == n and committed == n, f"hand-written, {threads} threads: {intake.counts}")
    return ns


def _locked_dict(threads: int, records: list[dict[str, Any]]) -> float:
    lock, held = threading.Lock(), {}

    def add(r: dict[str, Any]) -> None:
        k = r["id"].int
        with lock:
            held[k] = r

    ns = _timed(threads, records, add)
    check(len(held) == len(records), "locked dict: a record went missing")
    return ns


def measure(quick: bool = False) -> Section:
    n = 20_000 if quick else 200_000
    rounds = 2 if quick else 5
    records = _records(n)
    best: dict[tuple[str, int], float] = {}
    for _ in range(rounds):
        for name, run in (("batcher", _batcher), ("hand", _hand), ("dict", _locked_dict)):
            for t in THREADS:
                ns = run(t, records)
                best[(name, t)] = min(best.get((name, t), ns), ns)
    table = Table(
        "Per record, wall clock, from 1 and 4 producer threads",
        ["hand-off", "1 thread ns", "4 threads ns", "4 threads vs 1"],
    )
    labels = {
        "batcher": "`Batcher.add_nowait`",
        "hand": "a hand-written intake with the same guarantees (baseline)",
        "dict": "`threading.Lock` + dict (baseline)",
    }
    for name, label in labels.items():
        one, four = best[(name, 1)], best[(name, 4)]
        table.rows.append([label, f"{one:.0f}", f"{four:.0f}", fmt_ratio(four / one)])
    table.caption = f"{n:,} records, best of {rounds} interleaved rounds."
    one, four = best[("batcher", 1)], best[("batcher", 4)]
    return Section(
        key="threads",
        title="Many producer threads: no lock convoy",
        method=__doc__ or "",
        tables=[table],
        targets=[
            Target(
                "`Batcher.add_nowait` from 4 threads costs at most 2x per record what it "
                "costs from 1",
                four <= 2 * one,
                f"{four:.0f} ns vs {one:.0f} ns: {fmt_ratio(four / one)}",
            )
        ],
        data={"ns_per_record": {f"{k} {t}": v for (k, t), v in best.items()}, "records": n},
    )
