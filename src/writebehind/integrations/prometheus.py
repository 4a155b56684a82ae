"""Prometheus metrics: a collector over ``stats()``, per-write histograms, and values too
expensive to read on a scrape, refreshed in the background. Needs
``pip install 'writebehind[prometheus]'``; importing writebehind never imports
``prometheus_client``.

A scrape reads ``stats()`` (a snapshot under the buffer's lock: microseconds) and the
collector's own histogram buckets; it never waits on a database. Expensive values (the
dead-letter store's ``count()``, and your ``refreshers``) are read by a daemon thread every
``refresh_interval`` seconds once :meth:`PrometheusCollector.start` (or ``with``) started
it, each bounded by ``refresh_timeout``; a scrape serves the last values and
``writebehind_metrics_last_updated_timestamp_seconds``, the wall-clock time of the last
round in which every value was refreshed (0: never), so staleness shows. Constructing a
collector starts no thread: until ``start()``, or a :meth:`~PrometheusCollector.refresh`
of your own, those values are absent from scrapes and the timestamp says 0. Coroutine refreshers run
on the batcher's event loop (asyncpg pools are bound to their loop); plain callables run in
a thread of their own, so a slow one never stalls the batcher. A refresher that hangs keeps
its last value and is not called again until it returns: calls never pile up.

Labels come only from closed sets: ``batcher`` (the batcher's name), ``reason`` (a drop
policy), ``outcome`` (how a write attempt ended) and ``state`` (the sink's health). No
record data ever reaches a metric.

This module builds the metric families; the background refresh is in ``_refresh``.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from types import TracebackType
from typing import Any, Self

from .._errors import ConfigError
from .._instrument import WriteAttempt
from .._stats import SINK_STATES  # the one list of sink states
from ._refresh import Refresher, Source

__all__ = ["LATENCY_BUCKETS", "OUTCOMES", "SIZE_BUCKETS", "PrometheusCollector"]

OUTCOMES = ("committed", "retry", "split", "dead_lettered", "cancelled", "other")
"""The ``outcome`` label of the histograms (``other``: an outcome this version does not know)."""
DROP_REASONS = ("drop_newest", "drop_oldest", "expired")

SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Upper bounds of the batch-size histogram (records)."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10, 30)
"""Upper bounds of the write-latency histogram (seconds)."""

_P = "writebehind_"
COUNTERS: Mapping[str, tuple[str, str]] = {
    "accepted": ("records_accepted", "Records add()/add_nowait() took."),
    "committed": ("records_committed", "Records the sink committed."),
    "coalesced": ("records_coalesced", "Records superseded by a newer one with their key."),
    "dead_lettered": ("records_dead_lettered", "Records that can never be written."),
    "lost": ("records_lost", "Records still pending or in flight at the close deadline."),
    "batches": ("batches_committed", "Sink writes that committed."),
    "retried": ("writes_retried", "Sink writes that failed and were tried again."),
    "write_errors": ("write_errors", "Sink writes that raised (retriable or not)."),
    "splits": ("batch_splits", "Batches split to isolate records that fail permanently."),
    "timeouts": ("write_timeouts", "Sink writes that did not answer within write_timeout."),
    "throttled": ("writes_throttled", "Sink writes refused with 'retry after'."),
    "pauses": ("pauses", "Times the batcher left the healthy state (throttled or failing)."),
    "dead_letter_errors": ("dead_letter_errors", "Dead letters the store failed to keep."),
    "recovered": (
        "records_recovered",
        "Records a previous batcher left in the spool, taken again.",
    ),
    "stale": (
        "records_stale",
        "Committed records that changed nothing: the store held a newer version.",
    ),
}
"""``Stats`` field -> (counter name after ``writebehind_``, help); ``_total`` is appended."""
GAUGES: Mapping[str, tuple[str, str]] = {
    "pending": ("records_pending", "Records waiting in the buffer."),
    "in_flight": ("records_in_flight", "Records in a batch being written (or retried)."),
    "concurrency": ("concurrency", "Batches that may be written at once now (adaptive)."),
    "closed": ("closed", "1 once the batcher is closing or closed."),
    "needs_capacity": (
        "capacity_needed",
        "Cost of the records pending or in flight: what the batcher asks its capacity for.",
    ),
    "paused_for": ("paused_seconds", "Seconds left of a pause() (0 when not paused)."),
    "spooled": ("records_spooled", "Records in the spool not yet done (spool mode)."),
    "bytes_held": (
        "bytes_held",
        "Bytes of the records held, pending and in flight (with max_pending_bytes or "
        "max_batch_bytes).",
    ),
}
"""``Stats`` field -> (gauge name after ``writebehind_``, help)."""
SPECIAL = frozenset({"dropped", "dropped_by_reason", "sink_state", "capacity"})
"""``Stats`` fields exported by hand: ``dropped`` by reason, ``sink_state`` as a state set,
``capacity`` only for a batcher that has one."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _require() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(
            "PrometheusCollector needs prometheus_client: pip install 'writebehind[prometheus]'"
        ) from exc
    return prometheus_client


class _Histogram:
    """Bucket counters written by the batcher's loop only; read (racily, harmlessly) by
    scrapes. ``counts[i]`` counts values in bucket ``i`` (not cumulative; the last is +Inf)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        counts, total = list(self.counts), self.total  # copy first: a write may land meanwhile
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else _fmt(bound), float(running)))
        return out, total


def _fmt(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


class _Observation:
    """The context manager one write attempt gets: records its size and duration on exit."""

    __slots__ = ("attempt", "hists")

    def __init__(self, hists: Mapping[str, tuple[_Histogram, _Histogram]], attempt: Any) -> None:
        self.hists, self.attempt = hists, attempt

    def __enter__(self) -> Any:
        return self.attempt

    def __exit__(self, *exc: object) -> None:
        a = self.attempt
        size, latency = self.hists.get(a.outcome) or self.hists["other"]
        size.observe(a.size)
        latency.observe(a.duration)


class PrometheusCollector:
    """Exposes one or more batchers' counters, gauges and write histograms to Prometheus.

    ``PrometheusCollector(batcher)`` registers itself in ``registry`` (the default
    ``prometheus_client.REGISTRY``) and as an instrument on each batcher (``AsyncBatcher``
    or the sync ``Batcher``): from then on scrapes show ``stats()`` and the histograms.
    Constructing it starts no thread and does no I/O. :meth:`start` (or entering ``with``)
    starts the thread that refreshes the expensive values (the dead-letter store's size,
    ``refreshers``); without it they are absent until you call :meth:`refresh`.
    :meth:`close` (or leaving ``with``) unregisters it and stops the refresh thread, which
    also stops by itself once every batcher has closed. Create it after the batcher (before
    or after it starts); each batcher needs a distinct ``name``.

    Args:
        batcher: one batcher, or a sequence of them (the lanes of a service), each labelled
            by its ``name``.
        registry: where to register (``None``: ``prometheus_client.REGISTRY``).
        refresh_interval: seconds between background refreshes of the expensive values.
        refresh_timeout: seconds one refresh may take; past it the last value stays.
        refreshers: extra gauges, ``metric name -> callable`` returning a number, sync or
            ``async def`` (run on the batcher's loop). They carry no labels.
        histograms: observe each write attempt's size and duration (default True).
    """

    def __init__(
        self,
        batcher: Any,
        *,
        registry: Any = None,
        refresh_interval: float = 15.0,
        refresh_timeout: float = 5.0,
        refreshers: Mapping[str, Callable[[], Any]] | None = None,
        histograms: bool = True,
    ) -> None:
        pc = _require()
        self._mc = pc.metrics_core
        given = list(batcher) if isinstance(batcher, Sequence) else [batcher]
        self._engines = [getattr(b, "engine", b) for b in given]
        names = [e.name for e in self._engines]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"batcher: give one or more batchers with distinct names: {names}")
        for arg, value in (
            ("refresh_interval", refresh_interval),
            ("refresh_timeout", refresh_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{arg}: must be a number of seconds > 0, got {value!r}")
        self._sources: list[Source] = []
        for e in self._engines:
            count = getattr(getattr(e, "dead_letter", None), "count", None)
            if callable(count):
                self._sources.append(Source("dead_letter_records", count, e))
        for name, fn in (refreshers or {}).items():
            if not (isinstance(name, str) and _METRIC_NAME.fullmatch(name)) or name.startswith(_P):
                raise ConfigError(
                    f"refreshers: {name!r} is not a valid metric name of your own: use "
                    f"[a-zA-Z_:][a-zA-Z0-9_:]* without the '{_P}' prefix"
                )
            if not callable(fn):
                raise ConfigError(f"refreshers: {name!r} must map to a callable, got {fn!r}")
            self._sources.append(Source(name, fn, self._engines[0]))
        self._hists = {
            n: {o: (_Histogram(SIZE_BUCKETS), _Histogram(LATENCY_BUCKETS)) for o in OUTCOMES}
            for n in names
        }
        self._refresher = Refresher(
            self._engines,
            self._sources,
            interval=float(refresh_interval),
            timeout=float(refresh_timeout),
        )
        self._registry = pc.REGISTRY if registry is None else registry
        try:
            self._registry.register(self)
        except ValueError as exc:
            raise ConfigError(
                f"registry: metrics for batcher(s) {names} are already registered there ({exc}); "
                "close() the other collector, or pass one collector all the batchers"
            ) from exc
        if histograms:
            for e in self._engines:
                e.add_instrument(self)
        self._thread_name = f"writebehind-metrics[{','.join(names)}]"

    # -- the instrument: one cheap observation per write attempt --------------------------
    def write(self, attempt: WriteAttempt) -> AbstractContextManager[Any]:
        """The :class:`~writebehind.Instrument` hook: sizes and times one write attempt."""
        hists = self._hists.get(attempt.batcher)
        return nullcontext() if hists is None else _Observation(hists, attempt)

    # -- scrapes ------------------------------------------------------------------------------
    def describe(self) -> list[Any]:
        """The metric families (so a registry can refuse duplicate names)."""
        return list(self.collect())

    def collect(self) -> Iterator[Any]:
        """Build every metric family from ``stats()``, the histograms and the last refreshed
        values. Never waits on a refresh."""
        mc = self._mc
        snaps = [(e.name, e.stats()) for e in self._engines]
        yield from _per_batcher(mc.CounterMetricFamily, COUNTERS, snaps)
        fam = mc.CounterMetricFamily(
            _P + "records_dropped",
            "Records dropped (a drop policy, expiry).",
            labels=["batcher", "reason"],
        )
        for n, s in snaps:
            by = dict(s.dropped_by_reason)
            for reason in DROP_REASONS:
                fam.add_metric([n, reason], float(by.get(reason, 0)))
            rest = s.dropped - sum(by.get(r, 0) for r in DROP_REASONS)
            if rest:
                fam.add_metric([n, "other"], float(rest))
        yield fam
        yield from _per_batcher(mc.GaugeMetricFamily, GAUGES, snaps)
        fam = mc.GaugeMetricFamily(
            _P + "sink_state", "1 for the sink's current health state.", labels=["batcher", "state"]
        )
        for n, s in snaps:
            state = getattr(s, "sink_state", "healthy")
            for st in SINK_STATES:
                fam.add_metric([n, st], 1.0 if state == st else 0.0)
        yield fam
        fam = mc.GaugeMetricFamily(
            _P + "capacity_per_second",
            "Cost units per second the batcher's capacity grants now (shared with every "
            "batcher holding it); absent without capacity=.",
            labels=["batcher"],
        )
        for n, s in snaps:
            if getattr(s, "capacity", None) is not None:
                fam.add_metric([n], float(s.capacity))
        yield fam
        yield from self._histograms()
        yield from self._refreshed()

    def _histograms(self) -> Iterator[Any]:
        mc, lb = self._mc, ["batcher", "outcome"]
        for index, name, doc in (
            (0, "batch_size_records", "Records per sink write attempt."),
            (1, "write_duration_seconds", "Seconds per sink write attempt."),
        ):
            fam = mc.HistogramMetricFamily(_P + name, doc, labels=lb)
            for batcher, by_outcome in self._hists.items():
                for outcome, pair in by_outcome.items():
                    buckets, total = pair[index].cumulative()
                    if buckets[-1][1] or outcome == "committed":
                        fam.add_metric([batcher, outcome], buckets, total)
            yield fam

    def _refreshed(self) -> Iterator[Any]:
        if not self._sources:
            return
        mc = self._mc
        fam = mc.GaugeMetricFamily(
            _P + "dead_letter_records",
            "Records held in the dead-letter store (refreshed in the background).",
            labels=["batcher"],
        )
        own, stores = [], False
        for src in self._sources:
            if src.name == "dead_letter_records":
                stores = True
                if src.value is not None:
                    fam.add_metric([src.batcher.name], src.value)
            else:
                own.append(src)
        if stores:
            yield fam
        for src in own:
            g = mc.GaugeMetricFamily(src.name, f"{src.name} (refreshed in the background).")
            if src.value is not None:
                g.add_metric([], src.value)
            yield g
        yield mc.GaugeMetricFamily(
            _P + "metrics_last_updated_timestamp_seconds",
            "When every background-refreshed value was last refreshed (Unix time; 0: never).",
            value=self._refresher.updated or 0.0,
        )
        yield mc.CounterMetricFamily(
            _P + "metrics_refresh_failures",
            "Background refreshes that raised or did not answer within refresh_timeout.",
            value=float(self._refresher.failures),
        )

    # -- background refresh -----------------------------------------------------------------
    @property
    def last_updated(self) -> float | None:
        """Unix time of the last round in which every value was refreshed (None: never)."""
        return self._refresher.updated

    @property
    def _thread(self) -> threading.Thread | None:
        """The refresh thread (``None``: not started, or nothing to refresh)."""
        return self._refresher.thread

    def refresh(self) -> bool:
        """Run one refresh round now, in this thread, bounded by ``refresh_timeout``. True if
        every value was refreshed; False at once if another round is still running. It needs
        no :meth:`start` (a service may refresh on its own schedule). Do not call it on the
        batcher's own event loop (its coroutine refreshers run there)."""
        return self._refresher.refresh()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background refresh thread (``writebehind-metrics[<names>]``), if there
        is anything to refresh; entering ``with`` calls it. Calling it again does nothing;
        after :meth:`close` it raises :class:`~writebehind.WriteBehindError`. In a service
        that forks (gunicorn ``--preload``), create and start it in each worker, after the
        fork, as the batcher: it watches the engine the batcher had when it was created."""
        self._refresher.start(name=self._thread_name)

    def close(self, timeout: float = 5.0) -> None:
        """Unregister from the registry and stop the refresh thread (waiting up to
        ``timeout`` s). Calling it again does nothing. The batchers keep calling the (now
        unregistered) instrument, cheaply."""
        self._refresher.halt()
        with suppress(KeyError):  # already unregistered
            self._registry.unregister(self)
        self._refresher.join(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _per_batcher(
    family: Any, fields: Mapping[str, tuple[str, str]], snaps: list[tuple[str, Any]]
) -> Iterator[Any]:
    """One family per ``stats()`` field in ``fields``, one sample per batcher."""
    for field, (name, doc) in fields.items():
        fam = family(_P + name, doc, labels=["batcher"])
        for batcher, stats in snaps:
            fam.add_metric([batcher], float(getattr(stats, field)))
        yield fam
