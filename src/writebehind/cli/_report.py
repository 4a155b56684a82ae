"""The demo's final table: what the batcher did, how much it coalesced against what the
workload allows, and the naive comparison."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import CloseReport
from ._display import Row
from ._naive import NaiveResult
from ._target import Fleet

if TYPE_CHECKING:
    from ._demo_config import DemoConfig

__all__ = ["Batched", "final_rows"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Batched:
    """How the batched run went."""

    report: CloseReport
    statements: int
    send_seconds: float
    close_seconds: float


def final_rows(
    config: DemoConfig, fleet: Fleet, b: Batched, naive: NaiveResult | None, check: str
) -> list[Row]:
    """The rows of the final table."""
    s = b.report.stats
    p50, p99 = _percentiles(fleet.latencies_ns)
    sampled = "" if len(fleet.latencies_ns) == fleet.sent else ", 1 call in 16 timed"
    achieved = fleet.sent / s.committed if s.committed else float("inf")
    expected, why = config.expected_coalescing()
    rows: list[Row] = [
        ("heartbeats sent", f"{fleet.sent:,} in {b.send_seconds:.2f} s"),
        ("rows written", f"{s.committed:,} (sum of committed batch sizes)"),
        ("statements issued", f"{b.statements:,} in {s.batches:,} batches"),
        ("coalesced", f"{s.coalesced:,} (superseded in the buffer by a newer heartbeat)"),
        (
            "heartbeats per row",
            f"{achieved:,.2f} achieved, {expected:,.2f} expected (sent / rows written)",
        ),
        ("expected from", why),
        ("lost", f"{b.report.lost:,}"),
    ]
    if s.dead_lettered or s.dropped:
        rows.append(("dead-lettered / dropped", f"{s.dead_lettered:,} / {s.dropped:,}"))
    rows += [
        (
            "throughput",
            f"{fleet.sent / max(b.send_seconds, config.total / config.rate):,.0f} "
            "heartbeats/s accepted "
            f"(offered {config.rate:,.0f}/s)",
        ),
        ("add() latency", f"p50 {p50:,.1f} µs, p99 {p99:,.1f} µs{sampled}"),
        ("close (final flush)", f"{b.close_seconds * 1000:,.0f} ms"),
    ]
    if naive is not None:
        rows += _naive_rows(config, b, naive)
    rows.append(("table check", check))
    return rows


def _naive_rows(config: DemoConfig, b: Batched, naive: NaiveResult) -> list[Row]:
    how = (
        "measured"
        if naive.replayed == naive.total
        else f"extrapolated: the first {naive.replayed:,} took {naive.seconds:.1f} s"
    )
    ratio = naive.total / b.statements if b.statements else float("inf")
    keeps_up = naive.rate >= config.rate
    return [
        ("naive: statements", f"{naive.total:,} (one statement + one commit per heartbeat)"),
        ("naive: time", f"{naive.estimated_seconds:,.2f} s ({how})"),
        (
            "naive: max rate",
            f"{naive.rate:,.0f} heartbeats/s "
            f"({'keeps up with' if keeps_up else 'falls behind'} the offered "
            f"{config.rate:,.0f}/s)",
        ),
        ("naive / writebehind", f"{ratio:,.0f}x the statements and commits"),
    ]


def _percentiles(samples_ns: list[int]) -> tuple[float, float]:
    """p50 and p99 of ``samples_ns``, in microseconds."""
    if not samples_ns:
        return 0.0, 0.0
    ordered = sorted(samples_ns)
    last = len(ordered) - 1
    return ordered[round(0.50 * last)] / 1000, ordered[round(0.99 * last)] / 1000
