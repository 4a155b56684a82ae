"""What ``writebehind top`` shows: the sum of its endpoints as text lines or a rich view.

:class:`TopView` is a :class:`~._display.View` of a :class:`~._top_model.Fleet`: a title,
rows (rates, pending and in flight against ``max_pending`` as bars, counters, writes,
latency, configuration), one line per endpoint when there are several (down ones say
why), and the last notable events. With one endpoint it reads as it always has.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from ._top_model import Fleet, Totals

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["TopView", "describe", "rows"]

BAR = 20
_STATE_STYLE = {
    "healthy": "green",
    "throttled": "yellow",
    "failing": "red",
    "not started": "blue",
    "closed": "dim",
}


def rows(t: Totals) -> list[tuple[str, str]]:
    """The summed snapshot as (label, text) rows, shared by the plain and the rich view."""
    s, c = t.stats, t.config
    rates = "-"
    if t.rates is not None:
        acc, com, dt = t.rates
        rates = f"accepted/s {acc:,.1f}  committed/s {com:,.1f}  (over {dt:.1f} s)"
    limit = int(c["max_pending"])
    by_reason = ", ".join(f"{k} {v:,}" for k, v in s.get("dropped_by_reason", {}).items())
    return [
        ("rates", rates),
        ("pending", f"{_bar(s['pending'], limit)} {s['pending']:,} / {limit:,}"),
        ("in flight", f"{_bar(s['in_flight'], limit)} {s['in_flight']:,} / {limit:,}"),
        (
            "records",
            f"accepted {s['accepted']:,}  committed {s['committed']:,}  coalesced "
            f"{s['coalesced']:,}  dead-lettered {s['dead_lettered']:,}  lost {s['lost']:,}",
        ),
        ("dropped", f"{s['dropped']:,}" + (f" ({by_reason})" if by_reason else "")),
        (
            "writes",
            f"batches {s['batches']:,}  retries {s['retried']:,}  errors {s['write_errors']:,}"
            f"  timeouts {s.get('timeouts', 0):,}  splits {s['splits']:,}"
            f"  concurrency {s.get('concurrency', 1)}",
        ),
        ("latency", _latency(t.commits)),
        (
            "config",
            f"max_batch {c['max_batch']:,}  linger {c['linger']} s  max_pending {limit:,}  "
            f"when_full {c['when_full']}  max_in_flight {c['max_in_flight']}",
        ),
    ]


def _bar(value: int, total: int) -> str:
    return "[" + "#" * _filled(value, total) + "." * (BAR - _filled(value, total)) + "]"


def _filled(value: int, total: int) -> int:
    return min(BAR, round(BAR * value / total)) if total > 0 else 0


def _latency(commits: list[tuple[float, int]]) -> str:
    if not commits:
        return "no batch committed recently"
    durations = sorted(d for d, _ in commits)
    sizes = sorted(n for _, n in commits)
    return (
        f"write p50 {_ms(_pct(durations, 0.5))}  p99 {_ms(_pct(durations, 0.99))}  "
        f"batch size p50 {_pct(sizes, 0.5):,}  max {sizes[-1]:,}  "
        f"(last {len(sizes)} batches)"
    )


def _pct(xs: list[Any], q: float) -> Any:
    return xs[max(0, min(len(xs) - 1, math.ceil(len(xs) * q) - 1))]


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:,.0f} ms"


def describe(event: dict[str, Any]) -> tuple[str, str, str, str]:
    """(index, time, type, details) of an event line."""
    skip = {"type", "index", "at", "batcher"}
    if event.get("type") == "Closed":
        report = event.get("report", {})
        details = f"lost={report.get('lost')} timed_out={report.get('timed_out')}"
    else:
        details = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    at = event.get("at")
    when = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else ""
    index = f"#{event['index']}" if "index" in event else ""
    return index, when, str(event.get("type")), details


class TopView:
    """The fleet's summed snapshot, as text lines or a rich renderable."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        totals = fleet.totals()
        if totals is None:
            raise ValueError("no endpoint is up: nothing to show")
        self.totals = totals
        self.several = len(fleet.endpoints) > 1

    def where(self) -> str:
        """``at URL``, or with several endpoints, how many of them are summed."""
        eps = self.fleet.endpoints
        if not self.several:
            return f"at {eps[0].url}"
        return f"sum of {len(self.fleet.up)} of {len(eps)} endpoints up"

    def title(self) -> str:
        """``NAME (STATE) at URL`` (or ``NAME (STATE), sum of ...``)."""
        t = self.totals
        return f"{t.name} ({t.state}){',' if self.several else ''} {self.where()}"

    def endpoint_lines(self) -> list[tuple[str, str, str]]:
        """(number and URL, state, summary) of each endpoint."""
        out = []
        for i, e in enumerate(self.fleet.endpoints, 1):
            where = f"[{i}] {e.url}"
            if not e.up:
                out.append((where, "down", e.error or "not polled yet"))
                continue
            s, r = e.doc["stats"], e.rates()
            rate = f"  accepted/s {r[0]:,.1f}" if r is not None else ""
            summary = (
                f"{e.doc.get('batcher')}  accepted {s['accepted']:,}  committed "
                f"{s['committed']:,}  pending {s['pending']:,}  in flight {s['in_flight']:,}" + rate
            )
            out.append((where, str(e.doc.get("state")), summary))
        return out

    def _event_parts(self, number: int, event: dict[str, Any]) -> tuple[str, str, str, str]:
        index, when, kind, details = describe(event)
        return (f"[{number}] {index}" if self.several else index), when, kind, details

    def lines(self) -> list[str]:
        """The snapshot as text lines."""
        out = [f"writebehind top: {self.title()}"]
        out += [f"  {label:<10} {text}" for label, text in rows(self.totals)]
        if self.several:
            out.append("  endpoints:")
            lines = self.endpoint_lines()
            width = max(len(state) for _, state, _ in lines)  # states line up
            out += [f"    {w}  {state:<{width}}  {text}" for w, state, text in lines]
        out.append(f"  last {len(self.totals.notable)} notable event(s):")
        for number, event in self.totals.notable:
            out.append("    " + " ".join(p for p in self._event_parts(number, event) if p))
        return out

    def renderable(self) -> RenderableType:
        """The snapshot as a rich renderable: a grid with bars, endpoints, the events."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        t = self.totals
        limit = int(t.config["max_pending"])
        head = Text.assemble(
            ("writebehind top ", "bold"),
            (t.name, "bold cyan"),
            "  ",
            (t.state, f"bold {_STATE_STYLE.get(t.state, 'magenta')}"),
            f" {self.where()}",
        )
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        for label, text in rows(t):
            if label in ("pending", "in flight"):
                value = t.stats["pending" if label == "pending" else "in_flight"]
                filled = _filled(value, limit)
                color = "red" if filled >= BAR else "yellow" if filled > BAR // 2 else "green"
                bar = Text.assemble(
                    ("█" * filled, color), ("░" * (BAR - filled), "dim"), f" {value:,} / {limit:,}"
                )
                grid.add_row(label, bar)
            else:
                grid.add_row(label, Text(text))
        parts: list[RenderableType] = [head, grid]
        if self.several:
            table = Table(title="endpoints", title_justify="left", expand=False)
            for column in ("endpoint", "state", "summary"):
                table.add_column(column, overflow="fold")
            for where, state, text in self.endpoint_lines():
                style = "bold red" if state == "down" else _STATE_STYLE.get(state, "")
                table.add_row(where, Text(state, style=style), text)
            parts.append(table)
        events = Table(title="last notable events", title_justify="left", expand=False)
        for column in ("#", "time", "event", "details"):
            events.add_column(column, overflow="fold")
        for number, event in t.notable:
            index, when, kind, details = self._event_parts(number, event)
            bad = kind in ("BatchFailed", "RecordsDeadLettered", "RecordsDropped")
            events.add_row(index, when, Text(kind, style="red" if bad else ""), details)
        parts.append(events)
        return Group(*parts)
