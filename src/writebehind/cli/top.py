"""``writebehind top``: watch a running batcher through its local stats endpoint.

The application opts in with ``writebehind.integrations.serve.serve(batcher)`` (or
``serve_sync``); ``top`` polls ``GET /stats`` and ``GET /events?since=N&follow=0`` every
``--interval`` seconds and shows the state, rates over the interval, pending and in-flight
records against ``max_pending``, the counters, write latency and batch size from the recent
``BatchCommitted`` events, and the last notable events. ``--once`` prints one snapshot (two
polls ``--interval`` apart, for the rates) and exits; ``--plain`` prints text, not a live
rich table (also used when rich is not installed). An endpoint it cannot reach is exit 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._args import positive_float

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["register"]

_FIRST_EVENTS = 1024  # events read at start, for latency and the notable list
_NOTABLE = 10
_BAR = 20
_TIMEOUT = 5.0


def register(commands: Any) -> None:
    """Add the ``top`` subcommand to the ``writebehind`` parser's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "top",
        help="watch a running batcher through its local stats endpoint",
        description=(
            "Show a live view of a batcher whose application started the stats endpoint "
            "(writebehind.integrations.serve.serve(batcher)): state, rates, pending and in "
            "flight, counters, write latency, batch size and the last notable events."
        ),
    )
    parser.set_defaults(command=run, command_name="top")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", type=_url, help="the endpoint, e.g. http://127.0.0.1:8787")
    where.add_argument("--port", type=_port, help="the endpoint's port on 127.0.0.1")
    parser.add_argument(
        "--interval", type=_interval, default=1.0, help="seconds between refreshes (default: 1)"
    )
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--plain", action="store_true", help="plain text instead of rich")


class Unreachable(Exception):
    """The endpoint did not answer, or answered something that is not the stats endpoint."""


class Client:
    """A tiny HTTP client for the stats endpoint (stdlib ``http.client``)."""

    def __init__(self, url: str, timeout: float = _TIMEOUT) -> None:
        parts = urlsplit(url)
        self.url = url.rstrip("/")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout

    def get(self, path: str) -> bytes:
        """The body of ``GET path`` (status 200), or :class:`Unreachable`."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if response.status != 200:
            text = body.decode("utf-8", "replace").strip()[:200]
            raise Unreachable(f"GET {path} answered {response.status}: {text}")
        return body

    def stats(self) -> dict[str, Any]:
        """``GET /stats`` as a dict."""
        try:
            doc = json.loads(self.get("/stats"))
        except ValueError:
            raise Unreachable("GET /stats did not answer JSON: is this a stats endpoint?") from None
        if not isinstance(doc, dict) or doc.get("schema") != 1:
            raise Unreachable("GET /stats answered an unknown document (schema 1 expected)")
        return doc

    def events(self, since: int) -> list[dict[str, Any]]:
        """The events held from ``since`` on (``follow=0``: the response ends)."""
        body = self.get(f"/events?since={since}&follow=0")
        return [json.loads(line) for line in body.splitlines() if line.strip()]


@dataclass
class Watch:
    """What top knows: the last two snapshots and the recent events."""

    client: Client
    samples: deque[tuple[float, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=2))
    commits: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))
    notable: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_NOTABLE))
    next_event: int | None = None
    saw_close: bool = False

    def poll(self) -> None:
        """Read ``/stats`` and the events since the last poll."""
        doc = self.client.stats()
        self.samples.append((time.monotonic(), doc))
        held = doc.get("events", {})
        oldest, nxt = int(held.get("oldest", 1)), int(held.get("next", 1))
        since = self.next_event if self.next_event is not None else max(oldest, nxt - _FIRST_EVENTS)
        self.next_event = since
        if since < nxt:
            for event in self.client.events(since):
                self._take(event)

    def _take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "SubscriberLagged":
            self.next_event = int(event["resume_from"])
        elif isinstance(event.get("index"), int):
            self.next_event = event["index"] + 1
        if kind == "BatchCommitted":
            self.commits.append((float(event["duration"]), int(event["size"])))
            return
        self.saw_close = self.saw_close or kind == "Closed"
        self.notable.append(event)

    @property
    def closed(self) -> bool:
        """True once the batcher was seen closing."""
        return self.saw_close or bool(self.samples and self.samples[-1][1]["state"] == "closed")


def run(args: argparse.Namespace) -> int:
    """The ``top`` subcommand."""
    url = args.url or f"http://127.0.0.1:{args.port}"
    watch = Watch(Client(url))
    show = _Shower(plain=args.plain, live=not args.once)
    try:
        watch.poll()
        if args.once:
            time.sleep(args.interval)
            watch.poll()
            show.show(watch)
            return 0
        while True:
            show.show(watch)
            time.sleep(args.interval)
            watch.poll()
    except Unreachable as exc:
        show.stop()
        if watch.closed:
            print(f"writebehind top: the batcher closed; {url} is gone", file=sys.stderr)
            return 0
        print(
            f"writebehind top: cannot read the stats endpoint at {url}: {exc}\n"
            "(the application starts it with writebehind.integrations.serve.serve(batcher))",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        show.stop()


# -- what is shown ------------------------------------------------------------------------
def rows(watch: Watch) -> list[tuple[str, str]]:
    """The snapshot as (label, text) rows, shared by the plain and the rich display."""
    now, doc = watch.samples[-1]
    s, c = doc["stats"], doc["config"]
    rates = "-"
    if len(watch.samples) == 2:
        then, prev = watch.samples[0]
        dt = max(now - then, 1e-9)
        acc = (s["accepted"] - prev["stats"]["accepted"]) / dt
        com = (s["committed"] - prev["stats"]["committed"]) / dt
        rates = f"accepted/s {acc:,.1f}  committed/s {com:,.1f}  (over {dt:.1f} s)"
    limit = int(c["max_pending"])
    by_reason = ", ".join(f"{k} {v:,}" for k, v in s.get("dropped_by_reason", {}).items())
    out = [
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
        ("latency", _latency(watch)),
        (
            "config",
            f"max_batch {c['max_batch']:,}  linger {c['linger']} s  max_pending {limit:,}  "
            f"when_full {c['when_full']}  max_in_flight {c['max_in_flight']}",
        ),
    ]
    return out


def _bar(value: int, total: int) -> str:
    filled = min(_BAR, round(_BAR * value / total)) if total > 0 else 0
    return "[" + "#" * filled + "." * (_BAR - filled) + "]"


def _latency(watch: Watch) -> str:
    if not watch.commits:
        return "no batch committed recently"
    durations = sorted(d for d, _ in watch.commits)
    sizes = sorted(n for _, n in watch.commits)
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


def title(watch: Watch) -> str:
    """``writebehind top: NAME (STATE) at URL``."""
    doc = watch.samples[-1][1]
    return f"writebehind top: {doc['batcher']} ({doc['state']}) at {watch.client.url}"


def plain(watch: Watch) -> list[str]:
    """The snapshot as text lines."""
    lines = [title(watch)]
    lines += [f"  {label:<10} {text}" for label, text in rows(watch)]
    lines.append(f"  last {len(watch.notable)} notable event(s):")
    lines += ["    " + " ".join(p for p in describe(e) if p) for e in watch.notable]
    return lines


_STATE_STYLE = {"running": "green", "failing": "red", "paused": "yellow", "closed": "dim"}


def rich_view(watch: Watch) -> RenderableType:
    """The snapshot as a rich renderable: a grid with bars, and the events table."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    doc = watch.samples[-1][1]
    s, limit = doc["stats"], int(doc["config"]["max_pending"])
    state = str(doc["state"])
    head = Text.assemble(
        ("writebehind top ", "bold"),
        (str(doc["batcher"]), "bold cyan"),
        "  ",
        (state, f"bold {_STATE_STYLE.get(state, 'magenta')}"),
        f" at {watch.client.url}",
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, text in rows(watch):
        if label in ("pending", "in flight"):
            value = s["pending" if label == "pending" else "in_flight"]
            filled = min(_BAR, round(_BAR * value / limit)) if limit > 0 else 0
            color = "red" if filled >= _BAR else "yellow" if filled > _BAR // 2 else "green"
            bar = Text.assemble(
                ("█" * filled, color), ("░" * (_BAR - filled), "dim"), f" {value:,} / {limit:,}"
            )
            grid.add_row(label, bar)
        else:
            grid.add_row(label, Text(text))
    events = Table(title="last notable events", title_justify="left", expand=False)
    for column in ("#", "time", "event", "details"):
        events.add_column(column, overflow="fold")
    for event in watch.notable:
        index, when, kind, details = describe(event)
        style = "red" if kind in ("BatchFailed", "RecordsDeadLettered", "RecordsDropped") else ""
        events.add_row(index, when, Text(kind, style=style), details)
    return Group(head, grid, events)


class _Shower:
    """Prints the snapshot: a rich Live view, one rich print, or plain lines."""

    def __init__(self, *, plain: bool, live: bool) -> None:
        self.plain, self.live_wanted = plain, live
        self._live: Any = None
        self._console: Any = None
        if not plain:
            try:
                from rich.console import Console
            except ImportError:
                self.plain = True
            else:
                self._console = Console()

    def show(self, watch: Watch) -> None:
        if self.plain:
            print("\n".join(plain(watch)) + ("\n" if self.live_wanted else ""), flush=True)
            return
        view = rich_view(watch)
        if not self.live_wanted:
            self._console.print(view)
        elif self._live is None:
            from rich.live import Live

            self._live = Live(view, console=self._console, auto_refresh=False)
            self._live.start(refresh=True)
        else:
            self._live.update(view, refresh=True)

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()


# -- argument types ---------------------------------------------------------------------
def _url(text: str) -> str:
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT, got {text!r}")
    return text


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def _interval(text: str) -> float:
    value = positive_float(text)
    if value >= 3600:
        raise argparse.ArgumentTypeError(f"must be seconds > 0 (and < 3600), got {text}")
    return value
