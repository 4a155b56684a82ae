"""What ``writebehind top`` knows: each endpoint's last snapshots and recent events, and their sum.

An :class:`Endpoint` polls one stats endpoint (``/stats``, then the events since its last
poll) and remembers the last two snapshots (for rates), the recent ``BatchCommitted``
events (for latency and batch size) and the last notable events. An endpoint that does not
answer is *down*, with the reason; it is polled again next time. A :class:`Fleet` polls
every endpoint (one per worker process) at once and :meth:`Fleet.totals` sums the ones that
are up: counters and gauges add up, ``max_pending`` too (each worker has its own buffer).
No I/O but through the client; no display.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._top_client import Client, Unreachable

__all__ = ["STATE_ORDER", "Endpoint", "Fleet", "Totals", "sum_docs"]

FIRST_EVENTS = 1024  # events read at start, for latency and the notable list
NOTABLE = 10
COMMITS = 256
STATE_ORDER = ("failing", "throttled", "healthy", "not started")
"""The ``state`` of a ``/stats`` document, worst first (``closed`` only if all are)."""


@dataclass
class Endpoint:
    """One endpoint: its last two snapshots, recent commits and notable events."""

    client: Client
    samples: deque[tuple[float, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=2))
    commits: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=COMMITS))
    notable: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=NOTABLE))
    next_event: int | None = None
    saw_close: bool = False
    error: str | None = None
    """Why the last poll failed (None: it succeeded)."""

    @property
    def url(self) -> str:
        """The endpoint's base URL."""
        return self.client.url

    @property
    def up(self) -> bool:
        """True if the last poll succeeded."""
        return self.error is None and bool(self.samples)

    @property
    def doc(self) -> dict[str, Any]:
        """The last ``/stats`` document."""
        return self.samples[-1][1]

    @property
    def closed(self) -> bool:
        """True once the batcher was seen closing."""
        return self.saw_close or bool(self.samples and self.doc.get("state") == "closed")

    def poll(self) -> None:
        """Read ``/stats`` and the events since the last poll; on failure, note why."""
        try:
            doc = self.client.stats()
            self._events(doc)
        except Unreachable as exc:
            self.error = str(exc)
            return
        self.error = None
        self.samples.append((time.monotonic(), doc))

    def _events(self, doc: dict[str, Any]) -> None:
        held = doc.get("events", {})
        oldest, nxt = int(held.get("oldest", 1)), int(held.get("next", 1))
        since = self.next_event
        if since is None or since > nxt:  # the first poll, or a restarted process
            since = max(oldest, nxt - FIRST_EVENTS)
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

    def rates(self) -> tuple[float, float, float] | None:
        """(accepted/s, committed/s, seconds) over the last two snapshots; None without two,
        or when the counters went down (the process behind the URL was restarted)."""
        if len(self.samples) < 2 or not self.up:
            return None
        (then, prev), (now, doc) = self.samples
        acc = doc["stats"]["accepted"] - prev["stats"]["accepted"]
        com = doc["stats"]["committed"] - prev["stats"]["committed"]
        if acc < 0 or com < 0:
            return None
        dt = max(now - then, 1e-9)
        return acc / dt, com / dt, dt


@dataclass(frozen=True, slots=True)
class Totals:
    """The sum over the endpoints that are up."""

    name: str
    """The batchers' name (or ``"N batchers"`` when they differ)."""
    state: str
    """The worst state of any, in :data:`STATE_ORDER`: failing, throttled, healthy, not
    started; closed if all are closed."""
    stats: dict[str, Any]
    config: dict[str, Any]
    """The first endpoint's configuration, with ``max_pending`` summed."""
    rates: tuple[float, float, float] | None
    commits: list[tuple[float, int]]
    notable: list[tuple[int, dict[str, Any]]]
    """The last notable events of all endpoints, by time: (endpoint number, event)."""


def sum_docs(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up ``stats`` documents: integers are summed, mappings of integers key by key,
    booleans are true if all are, and anything else is kept if all agree, else "mixed"."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for doc in stats for k in doc):
        values = [doc[key] for doc in stats if key in doc]
        if all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = sum(values)
        elif all(isinstance(v, dict) for v in values):
            out[key] = sum_docs(values)
        else:
            out[key] = values[0] if all(v == values[0] for v in values) else "mixed"
    return out


class Fleet:
    """Every endpoint ``top`` watches (one per worker process)."""

    def __init__(self, urls: list[str]) -> None:
        self.endpoints = [Endpoint(Client(url)) for url in urls]

    def poll(self) -> None:
        """Poll every endpoint, all at once (a slow one delays the view by its timeout)."""
        if len(self.endpoints) == 1:
            self.endpoints[0].poll()
            return
        with concurrent.futures.ThreadPoolExecutor(len(self.endpoints)) as pool:
            for done in [pool.submit(e.poll) for e in self.endpoints]:
                done.result()

    @property
    def up(self) -> list[Endpoint]:
        """The endpoints whose last poll succeeded."""
        return [e for e in self.endpoints if e.up]

    @property
    def all_closed(self) -> bool:
        """True when every endpoint's batcher was seen closing."""
        return all(e.closed for e in self.endpoints)

    def totals(self) -> Totals | None:
        """The sum over the endpoints that are up (None if none is)."""
        up = self.up
        if not up:
            return None
        docs = [e.doc for e in up]
        names = sorted({str(d.get("batcher")) for d in docs})
        states = {str(d.get("state")) for d in docs}
        live = [s for s in STATE_ORDER if s in states]
        state = live[0] if live else "closed" if states == {"closed"} else sorted(states)[0]
        config = dict(docs[0].get("config", {}))
        config["max_pending"] = sum(int(d.get("config", {}).get("max_pending", 0)) for d in docs)
        rates = [r for r in (e.rates() for e in up) if r is not None]
        total_rates = None
        if rates:
            total_rates = (
                sum(r[0] for r in rates),
                sum(r[1] for r in rates),
                max(r[2] for r in rates),
            )
        numbered = [(i, ev) for i, e in enumerate(self.endpoints, 1) if e.up for ev in e.notable]
        numbered.sort(key=lambda pair: float(pair[1].get("at") or 0.0))
        return Totals(
            name=names[0] if len(names) == 1 else f"{len(names)} batchers",
            state=state,
            stats=sum_docs([d["stats"] for d in docs]),
            config=config,
            rates=total_rates,
            commits=[c for e in up for c in e.commits],
            notable=numbered[-NOTABLE:],
        )
