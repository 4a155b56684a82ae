"""The Prometheus collector: exposition equal to stats(), per-attempt histograms, closed label
sets, and background refreshes that never block a scrape nor pile up."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import writebehind as wb
from tests.conftest import Open, settle
from writebehind._instrument import WriteAttempt
from writebehind.integrations import prometheus as wbp
from writebehind.integrations.prometheus import PrometheusCollector
from writebehind.testing import FlakySink, GatedSink, MemorySink

FAR = 3600.0
FAST_RETRY = wb.RetryPolicy(base=0.001, cap=0.001)
MARKER = "record-data-must-not-leak"
CLOSED_LABELS = {
    "batcher": None,  # checked against the batchers' names
    "reason": {*wbp.DROP_REASONS, "other"},
    "outcome": set(wbp.OUTCOMES),
    "state": set(wbp.SINK_STATES),
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every refresh thread the test started has ended by the end of the test."""
    yield
    deadline = threading.Event()
    for _ in range(200):
        alive = [t.name for t in threading.enumerate() if t.name.startswith("writebehind-")]
        alive = [n for n in alive if "metrics" in n or "refresh" in n]
        if not alive:
            return
        deadline.wait(0.01)
    pytest.fail(f"threads left running: {alive}")


def text(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of a fresh exposition, parsed back: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text(registry)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


class Store:
    """A dead-letter store with a count() the test controls; notes the loop it ran on."""

    def __init__(self, n: int = 0) -> None:
        self.n = n
        self.fail: BaseException | None = None
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.entries: list[Any] = []

    async def put(self, entries: Sequence[Any]) -> None:
        self.entries.extend(entries)

    async def count(self) -> int:
        self.loops.append(asyncio.get_running_loop())
        if self.fail is not None:
            raise self.fail
        return self.n


async def workload(b: Any) -> None:
    """30 records, 5 of them superseded, one poison (n == 7), the first write failing."""
    for n in range(30):
        b.add_nowait({"k": n % 25, "n": n, "secret": MARKER})
    await b.flush()


async def test_exposition_equals_stats_after_a_known_workload(
    api: Open, registry: CollectorRegistry
) -> None:
    """Every counter and gauge in the parsed exposition equals stats(), and the histograms
    count every write attempt, by outcome, as stats() and the sink do."""
    sink = FlakySink(fail_first=1, poison=lambda r: r["n"] == 7)
    async with api(sink, key="k", version="n", max_batch=10, linger=FAR, retry=FAST_RETRY) as b:
        collector = PrometheusCollector(b.batcher, registry=registry)
        await workload(b)
        samples, s = scrape(registry), b.stats()
        assert (s.coalesced, s.dead_lettered, s.retried, s.splits) != (0, 0, 0, 0), s
        name = {"batcher": "default"}
        for field, (metric, _) in wbp.COUNTERS.items():
            assert value(samples, f"writebehind_{metric}_total", **name) == getattr(s, field)
        for field, (metric, _) in wbp.GAUGES.items():
            assert value(samples, f"writebehind_{metric}", **name) == float(getattr(s, field))
        assert total(samples, "writebehind_records_dropped_total") == s.dropped == 0
        for st in wbp.SINK_STATES:
            got = value(samples, "writebehind_sink_state", state=st, **name)
            assert got == (1.0 if st == s.sink_state else 0.0)
        count = "writebehind_write_duration_seconds_count"
        assert total(samples, count) == sink.attempts
        assert total(samples, "writebehind_batch_size_records_count") == sink.attempts
        assert value(samples, count, outcome="committed", **name) == s.batches
        assert value(samples, count, outcome="retry", **name) == s.retried
        assert value(samples, count, outcome="split", **name) == s.splits
        dead = value(samples, count, outcome="dead_lettered", **name)
        assert dead == s.dead_lettered == 1  # one poison record, isolated by splitting
        committed_rows = value(
            samples, "writebehind_batch_size_records_sum", outcome="committed", **name
        )
        assert committed_rows == s.committed == len(sink.records)
        inf = value(samples, "writebehind_batch_size_records_bucket", le="+Inf", **name,
                    outcome="committed")  # fmt: skip
        assert inf == s.batches
        collector.close()
    assert "writebehind_" not in text(registry)  # close() unregistered it


async def test_dropped_records_are_counted_by_reason(
    api: Open, registry: CollectorRegistry
) -> None:
    """``writebehind_records_dropped_total{reason}`` follows stats().dropped_by_reason (with
    nothing pending, drop_oldest drops the newest: which reason is a race, the sum is not)."""
    sink = GatedSink()
    async with api(sink, max_batch=2, max_pending=2, when_full="drop_oldest", linger=FAR) as b:
        with PrometheusCollector(b.batcher, registry=registry):
            try:
                for n in range(6):
                    b.add_nowait({"n": n})
                samples, s = scrape(registry), b.stats()
            finally:
                sink.open()
    assert s.dropped > 0
    by = {
        r: total(samples, "writebehind_records_dropped_total", reason=r) for r in wbp.DROP_REASONS
    }
    assert by == {r: s.dropped_by_reason.get(r, 0) for r in wbp.DROP_REASONS}
    assert sum(by.values()) == s.dropped


async def test_labels_come_from_closed_sets_and_no_record_data_leaks(
    registry: CollectorRegistry,
) -> None:
    """Two lanes in one collector: every label is batcher, reason, outcome, state or le,
    with values from their closed sets; no record field appears anywhere."""
    sinks = [FlakySink(fail_first=1, poison=lambda r: r["n"] == 7), MemorySink()]
    async with (
        wb.AsyncBatcher(sinks[0], name="hot", max_batch=10, linger=FAR, retry=FAST_RETRY) as a,
        wb.AsyncBatcher(sinks[1], name="cold", max_batch=10, linger=FAR) as b,
    ):
        with PrometheusCollector([a, b], registry=registry):
            await workload(a)
            await workload(b)
            exposition = text(registry)
            samples = scrape(registry)
    assert MARKER not in exposition
    assert {dict(lab).get("batcher") for _, lab in samples} - {None} == {"hot", "cold"}
    unlabelled = {name for name, lab in samples if not lab}
    assert unlabelled <= {  # the collector's own refresh bookkeeping
        "writebehind_metrics_last_updated_timestamp_seconds",
        "writebehind_metrics_refresh_failures_total",
    }
    for (name, labels), _ in samples.items():
        for key, val in labels:
            assert key in {*CLOSED_LABELS, "le"}, (name, key)
            allowed = CLOSED_LABELS.get(key)
            assert allowed is None or val in allowed, (name, key, val)
    count = "writebehind_write_duration_seconds_count"
    assert total(samples, count, batcher="hot") == sinks[0].attempts
    assert total(samples, count, batcher="cold") == sinks[1].writes


def test_every_stats_field_is_exported() -> None:
    """A counter added to Stats must be mapped to a metric (or exported by hand)."""
    mapped = set(wbp.COUNTERS) | set(wbp.GAUGES) | wbp.SPECIAL
    assert {f.name for f in fields(wb.Stats)} <= mapped


def test_histogram_buckets_are_cumulative_and_upper_bound_inclusive() -> None:
    """A value equal to a bound lands in that bucket; +Inf holds everything; sum adds up."""
    h = wbp._Histogram((1, 10, 100))
    for v in (0.5, 1, 2, 10, 1000):
        h.observe(v)
    buckets, s = h.cumulative()
    assert buckets == [("1", 2.0), ("10", 4.0), ("100", 4.0), ("+Inf", 5.0)]
    assert s == 1013.5


def test_instrument_ignores_unknown_batchers_and_unknown_outcomes(
    registry: CollectorRegistry,
) -> None:
    """An attempt of another batcher is not counted; an unknown outcome counts as other."""
    b = wb.AsyncBatcher(MemorySink(), name="lane")
    with PrometheusCollector(b, registry=registry, histograms=False) as c:
        for batcher, outcome in (("lane", "weird"), ("elsewhere", "committed")):
            attempt = WriteAttempt(batcher=batcher, sink="s", size=3, attempt=1, reason="size")
            with c.write(attempt):
                attempt.outcome, attempt.duration = outcome, 0.002
        samples = scrape(registry)
    count = "writebehind_write_duration_seconds_count"
    assert total(samples, count) == 1
    assert value(samples, count, batcher="lane", outcome="other") == 1
    assert (
        value(samples, "writebehind_batch_size_records_sum", batcher="lane", outcome="other") == 3
    )


async def test_store_count_refreshes_on_the_batcher_loop_and_the_gauge_advances(
    api: Open, registry: CollectorRegistry
) -> None:
    """The dead-letter store's count() runs on the batcher's own loop; a refresh updates the
    value and moves the last-updated gauge forward."""
    store = Store(n=3)
    async with api(MemorySink(), dead_letter=store) as b:
        with PrometheusCollector(b.batcher, registry=registry, refresh_interval=FAR) as c:
            await settle(lambda: c.last_updated is not None)  # the thread's first round
            before = scrape(registry)
            assert value(before, "writebehind_dead_letter_records", batcher="default") == 3
            stamp = value(before, "writebehind_metrics_last_updated_timestamp_seconds")
            assert stamp == c.last_updated
            store.n = 8
            assert await asyncio.to_thread(c.refresh) is True
            after = scrape(registry)
            assert value(after, "writebehind_dead_letter_records", batcher="default") == 8
            assert value(after, "writebehind_metrics_last_updated_timestamp_seconds") > stamp
            engine = getattr(b.batcher, "engine", b.batcher)
            assert set(store.loops) == {engine.loop}


async def test_a_hung_sync_refresher_keeps_its_value_and_never_piles_up(
    api: Open, registry: CollectorRegistry
) -> None:
    """A blocked callable: the round gives up after refresh_timeout, the old value and the
    timestamp stay, a scrape answers while it hangs, and it is not called again until it
    returns."""
    gate = threading.Event()
    gate.set()
    calls = []

    def queue_depth() -> float:
        calls.append(1)
        gate.wait()
        return float(len(calls))

    async with api(MemorySink()) as b:
        with PrometheusCollector(
            b.batcher, registry=registry, refresh_interval=FAR, refresh_timeout=0.5,
            refreshers={"app_queue_depth": queue_depth},
        ) as c:  # fmt: skip
            await settle(lambda: c.last_updated is not None)
            stamp = c.last_updated
            assert value(scrape(registry), "app_queue_depth") == 1
            gate.clear()
            hung_round = asyncio.create_task(asyncio.to_thread(c.refresh))
            await settle(lambda: len(calls) == 2)
            async with asyncio.timeout(5):  # the scrape does not wait for the round
                samples = await asyncio.to_thread(scrape, registry)
            assert not hung_round.done()
            assert value(samples, "app_queue_depth") == 1
            assert await hung_round is False
            samples = scrape(registry)
            assert value(samples, "app_queue_depth") == 1
            assert value(samples, "writebehind_metrics_last_updated_timestamp_seconds") == stamp
            assert value(samples, "writebehind_metrics_refresh_failures_total") == 1
            assert await asyncio.to_thread(c.refresh) is False  # still hanging: not called
            assert len(calls) == 2
            gate.set()
            (source,) = [x for x in c._sources if x.name == "app_queue_depth"]
            await settle(lambda: source.pending is not None and source.pending.done())
            assert await asyncio.to_thread(c.refresh) is True
            samples = scrape(registry)
            assert value(samples, "app_queue_depth") == 3
            assert c.last_updated is not None
            assert stamp is not None
            assert c.last_updated > stamp


async def test_a_hung_coroutine_refresher_is_cancelled_and_keeps_its_value(
    registry: CollectorRegistry,
) -> None:
    """An ``async def`` refresher runs on the batcher's loop; past refresh_timeout it is
    cancelled there, and the old value and timestamp stay."""
    hang = asyncio.Event()
    seen: list[str] = []

    async def backlog() -> float:
        seen.append("called")
        if hang.is_set():
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
        return 5.0

    async with wb.AsyncBatcher(MemorySink()) as b:
        with PrometheusCollector(
            b, registry=registry, refresh_interval=FAR, refresh_timeout=0.2,
            refreshers={"app_backlog": backlog},
        ) as c:  # fmt: skip
            await settle(lambda: c.last_updated is not None)
            stamp = c.last_updated
            hang.set()
            assert await asyncio.to_thread(c.refresh) is False
            await settle(lambda: seen[-1] == "cancelled")
            samples = scrape(registry)
            assert value(samples, "app_backlog") == 5
            assert value(samples, "writebehind_metrics_last_updated_timestamp_seconds") == stamp


async def test_a_failing_store_count_is_logged_scrubbed_and_the_value_kept(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """count() raising is no exception for anyone: it is logged (secrets masked), counted,
    and the last value stays."""
    store = Store(n=4)
    async with wb.AsyncBatcher(MemorySink(), dead_letter=store) as b:
        with PrometheusCollector(b, registry=registry, refresh_interval=FAR) as c:
            await settle(lambda: c.last_updated is not None)
            store.fail = RuntimeError("connect failed: postgresql://app:hunter2@db/x")
            with caplog.at_level(logging.WARNING, logger="writebehind"):
                assert await asyncio.to_thread(c.refresh) is False
            samples = scrape(registry)
            assert value(samples, "writebehind_dead_letter_records", batcher="default") == 4
            assert value(samples, "writebehind_metrics_refresh_failures_total") == 1
    assert "RuntimeError" in caplog.text
    assert "dead_letter_records" in caplog.text
    assert "hunter2" not in caplog.text


async def test_the_refresh_thread_stops_when_the_batcher_closes(
    api: Open, registry: CollectorRegistry
) -> None:
    """Closing the batcher ends the refresh thread without close(); scrapes still work."""
    async with api(MemorySink(), dead_letter=Store(n=1)) as b:
        c = PrometheusCollector(b.batcher, registry=registry, refresh_interval=FAR)
        c.start()
        thread = c._thread
        assert thread is not None
        assert thread.is_alive()
    await settle(lambda: not thread.is_alive())
    assert value(scrape(registry), "writebehind_closed", batcher="default") == 1
    c.close()


def refresh_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("writebehind-metrics")}


async def test_constructing_starts_no_thread_and_scrapes_work_without_start(
    api: Open, registry: CollectorRegistry
) -> None:
    """A collector that was never started runs nothing: no thread, no refresher called; a
    scrape still shows stats() and the histograms, the refreshed values are absent and the
    last-updated gauge says 0 (never); refresh() by hand fills them in."""
    calls: list[int] = []

    def depth() -> float:
        calls.append(1)
        return 7.0

    store = Store(n=2)
    async with api(MemorySink(), dead_letter=store) as b:
        before = set(threading.enumerate())
        c = PrometheusCollector(
            b.batcher, registry=registry, refresh_interval=0.01, refreshers={"app_depth": depth}
        )
        assert set(threading.enumerate()) == before
        assert c._thread is None
        for n in range(5):
            b.add_nowait({"n": n})
        await b.flush()
        samples = scrape(registry)
        assert value(samples, "writebehind_records_committed_total", batcher="default") == 5
        assert total(samples, "writebehind_write_duration_seconds_count") == b.stats().batches
        assert not [k for k in samples if k[0] in ("app_depth", "writebehind_dead_letter_records")]
        assert value(samples, "writebehind_metrics_last_updated_timestamp_seconds") == 0
        assert (calls, store.loops, c.last_updated) == ([], [], None)
        assert await asyncio.to_thread(c.refresh) is True
        samples = scrape(registry)
        assert value(samples, "app_depth") == 7
        assert value(samples, "writebehind_dead_letter_records", batcher="default") == 2
        assert refresh_threads() == set()  # the round ran here: still no refresh loop
        c.close()


async def test_start_is_idempotent_and_close_stops_the_thread(
    api: Open, registry: CollectorRegistry
) -> None:
    """start() starts one refresh thread, a second start() no other; close() stops it and
    unregisters, a second close() does nothing, and start() after close() is refused."""
    async with api(MemorySink(), dead_letter=Store(n=1)) as b:
        c = PrometheusCollector(b.batcher, registry=registry, refresh_interval=FAR)
        assert refresh_threads() == set()
        c.start()
        (thread,) = refresh_threads()
        assert thread is c._thread
        assert thread.name == "writebehind-metrics[default]"
        await settle(lambda: c.last_updated is not None)  # the thread's first round
        c.start()
        assert refresh_threads() == {thread}
        c.close()
        assert not thread.is_alive()
        assert "writebehind_" not in text(registry)
        c.close()
        with pytest.raises(wb.WriteBehindError, match="closed; create a new one"):
            c.start()
        assert refresh_threads() == set()


def test_close_without_start_and_start_with_nothing_to_refresh(
    registry: CollectorRegistry,
) -> None:
    """A collector closed before it started never starts a thread; with nothing to refresh
    (no store, no refreshers) start() starts none either."""
    b = wb.AsyncBatcher(MemorySink(), dead_letter=Store(n=1))
    c = PrometheusCollector(b, registry=registry)
    c.close()
    c.close()
    assert c._thread is None
    with pytest.raises(wb.WriteBehindError, match="closed"):
        c.start()
    plain = wb.AsyncBatcher(MemorySink(), name="plain")
    with PrometheusCollector(plain, registry=registry) as c:
        assert c._thread is None
        assert refresh_threads() == set()
        assert "writebehind_records_accepted_total" in text(registry)


async def test_with_starts_and_stops_the_refresh_thread(
    api: Open, registry: CollectorRegistry
) -> None:
    """Entering ``with`` starts the refresh thread (as construction once did); leaving it
    stops the thread."""
    async with api(MemorySink(), dead_letter=Store(n=3)) as b:
        with PrometheusCollector(b.batcher, registry=registry, refresh_interval=FAR) as c:
            thread = c._thread
            assert thread is not None
            assert thread.is_alive()
            await settle(lambda: c.last_updated is not None)
        assert not thread.is_alive()


def test_refresh_on_the_batcher_loop_is_refused(registry: CollectorRegistry) -> None:
    """refresh() would block the loop its coroutine refreshers need: a clear error instead."""

    async def main() -> None:
        async with wb.AsyncBatcher(MemorySink()) as b:
            c = PrometheusCollector(b, registry=registry, histograms=False)
            with c, pytest.raises(wb.WriteBehindError, match="to_thread"):
                c.refresh()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refresh_interval": 0}, "refresh_interval"),
        ({"refresh_timeout": -1}, "refresh_timeout"),
        ({"refreshers": {"bad name": lambda: 1}}, "valid metric name"),
        ({"refreshers": {"writebehind_x": lambda: 1}}, "prefix"),
        ({"refreshers": {"ok_name": 3}}, "callable"),
    ],
)
def test_bad_arguments_raise_config_error(
    registry: CollectorRegistry, kwargs: dict[str, Any], match: str
) -> None:
    """Each bad argument names itself and what is allowed."""
    with pytest.raises(wb.ConfigError, match=match):
        PrometheusCollector(wb.AsyncBatcher(MemorySink()), registry=registry, **kwargs)


def test_two_collectors_for_one_name_in_one_registry_raise(registry: CollectorRegistry) -> None:
    """Duplicate batcher names, in one collector or across two, are a ConfigError."""
    a, b = wb.AsyncBatcher(MemorySink()), wb.AsyncBatcher(MemorySink())
    with pytest.raises(wb.ConfigError, match="distinct names"):
        PrometheusCollector([a, b], registry=registry)
    with (
        PrometheusCollector(a, registry=registry),
        pytest.raises(wb.ConfigError, match="already registered"),
    ):
        PrometheusCollector(b, registry=registry)


def test_importing_writebehind_never_imports_prometheus_client() -> None:
    """Neither the core nor the integration module imports prometheus_client."""
    code = (
        "import sys, writebehind, writebehind.integrations.prometheus\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the package, constructing the collector says what to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(wb.ConfigError, match=r"pip install 'writebehind\[prometheus\]'"):
        PrometheusCollector(wb.AsyncBatcher(MemorySink()))


async def test_a_sqlite_dead_letter_path_is_counted(
    api: Open, registry: CollectorRegistry, tmp_path: Path
) -> None:
    """With a dead-letter file path, the refreshed gauge equals the records stored."""
    sink = FlakySink(poison=lambda r: r["n"] in (2, 5))
    async with api(sink, max_batch=8, linger=FAR, dead_letter=tmp_path / "dl.db") as b:
        with PrometheusCollector(b.batcher, registry=registry, refresh_interval=FAR) as c:
            for n in range(8):
                b.add_nowait({"n": n})
            await b.flush()
            assert await asyncio.to_thread(c.refresh) is True
            samples = scrape(registry)
            stored = value(samples, "writebehind_dead_letter_records", batcher="default")
            assert stored == b.stats().dead_lettered == 2


async def test_close_on_the_batcher_loop_does_not_wait_for_a_round_that_needs_the_loop(
    registry: CollectorRegistry,
) -> None:
    """close() from the loop thread (a FastAPI lifespan, say) while a refresh round waits
    for a coroutine on that same loop ends the round at once instead of deadlocking."""
    store = Store(n=1)
    called = asyncio.Event()

    async def hanging_count() -> int:
        called.set()
        await asyncio.Event().wait()
        return 0

    store.count = hanging_count  # type: ignore[method-assign]
    async with wb.AsyncBatcher(MemorySink(), dead_letter=store) as b:
        c = PrometheusCollector(b, registry=registry, refresh_timeout=60)
        c.start()
        await called.wait()  # the thread's first round now waits for this loop
        c.close(timeout=10)  # blocks the loop: only the halt can end the round
        assert c._thread is not None
        assert not c._thread.is_alive()


async def test_capacity_gauges(registry: CollectorRegistry) -> None:
    """A batcher with a capacity exports its rate and what it needs; one without exports no
    rate (absent, not 0) and needs 0."""
    gate = GatedSink()
    cap = wb.ProvisionedCapacity(per_second=500)
    async with (
        wb.AsyncBatcher(gate, name="budgeted", cost="ru", capacity=cap, linger=FAR) as b,
        wb.AsyncBatcher(MemorySink(), name="free", linger=FAR) as free,
    ):
        PrometheusCollector([b, free], registry=registry)
        b.add_nowait({"ru": 2.5})
        b.add_nowait({"ru": 4})
        b.pause(30)
        samples = scrape(registry)
        assert value(samples, "writebehind_capacity_per_second", batcher="budgeted") == 500
        assert value(samples, "writebehind_capacity_needed", batcher="budgeted") == 6.5
        assert value(samples, "writebehind_capacity_needed", batcher="free") == 0
        assert 29 < value(samples, "writebehind_paused_seconds", batcher="budgeted") <= 30
        assert total(samples, "writebehind_capacity_per_second", batcher="free") == 0
        assert ("writebehind_capacity_per_second", (("batcher", "free"),)) not in samples
        gate.open()
