"""The thread-backed Batcher: many threads at once, and no deadlock from its own thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import writebehind as wb
from writebehind.testing import MemorySink

from .conftest import assert_conserved


def test_many_threads_adding_at_once() -> None:
    """Eight threads adding 5,000 records each: everything is conserved and committed, and
    the newest version of every key reaches the sink."""
    sink = MemorySink()
    with wb.Batcher(sink, key="id", version="v", max_batch=100, linger=0.01) as b:

        def produce(t: int) -> None:
            for i in range(5000):
                record = {"id": i % 50, "v": (i, t)}
                if i % 2:
                    b.add(record)
                else:
                    _retry_nowait(b, record)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        b.flush()
        s = b.stats()
        assert_conserved(s)
        assert s.accepted == 40_000
        assert s.pending == s.in_flight == 0
    newest: dict[int, Any] = {}
    for record in sink.records:  # what a version-conditional upsert would leave
        newest[record["id"]] = max(newest.get(record["id"], record["v"]), record["v"])
    assert newest == {k: (4950 + k, 7) for k in range(50)}


def _retry_nowait(b: wb.Batcher, record: dict[str, Any]) -> None:
    while True:
        try:
            b.add_nowait(record)
            return
        except wb.BufferFull:
            threading.Event().wait(0.0005)


def test_calls_from_the_loop_thread_raise_instead_of_deadlocking() -> None:
    """A sink that calls back into its Batcher gets a clear error, not a hang."""
    errors: list[BaseException] = []
    holder: dict[str, wb.Batcher] = {}

    async def sink_fn(batch: list[Any]) -> None:
        for call in (lambda: holder["b"].flush(), lambda: holder["b"].add({"x": 0})):
            try:
                call()
            except wb.WriteBehindError as exc:
                errors.append(exc)

    with wb.Batcher(wb.CallableSink(sink_fn), linger=0) as b:
        holder["b"] = b
        b.add({"x": 1}).result(5)
    assert len(errors) == 2
    assert all("deadlock" in str(e) for e in errors)


def test_result_timeout() -> None:
    """receipt.result(timeout) raises TimeoutError when the outcome is not known in time."""
    from writebehind.testing import GatedSink

    sink = GatedSink()
    with wb.Batcher(sink, linger=0) as b:
        receipt = b.add({"x": 1})
        with pytest.raises(TimeoutError):
            receipt.result(0.05)
        sink.open()
        assert receipt.result(5) is wb.Outcome.COMMITTED


def test_close_twice_returns_the_same_report() -> None:
    """close() is idempotent; the report and stats stay readable."""
    b = wb.Batcher(MemorySink())
    b.start()
    b.add({"x": 1})
    first = b.close()
    assert b.close() is first
    assert first.stats.committed == 1
