"""The lease thread of a :class:`~writebehind.RedisSharedCapacity`: one Lua step per round
trip (``_lease_script``), its answers turned into the rate of the capacity's token bucket,
and what an outage or a stop does to the leases. A mixin: the capacity's state (its lock,
the partitions it holds, its bucket) lives on the capacity itself."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from .._capacity import Listener, TokenBucket
from .._redact import describe as describe_error
from ._lease_script import STEP

__all__ = ["LeaseSteps", "Run", "refused_credentials"]

log = logging.getLogger("writebehind")

_IDLE_INTERVAL = 1.0  # seconds between round trips when wanting and holding nothing
_WANT_MEMORY = 1.0  # seconds: the want stepped is the largest of this long (no churn)
_LOCK_POLL = 0.02  # seconds between tries of the holders' lock (see _holders_now)


class Run:
    """One start-to-stop of the lease thread: its id in Redis, client and stop signal."""

    def __init__(self, client: Any, owned: bool) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.client = client
        self.owned = owned
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.wants: deque[tuple[float, int]] = deque()  # (monotonic time, partitions wanted)
        self.needs = 0.0  # the batchers' needs at the last look


class LeaseSteps:
    """The lease thread's side of :class:`~writebehind.RedisSharedCapacity` (see there)."""

    # the capacity's state, set by RedisSharedCapacity.__init__ and Capacity.__init__
    name: str
    reserved: float
    partition: float
    total: int
    interval: float
    lease: float
    round_trips: int
    _state: threading.Lock
    _held: int
    _valid_until: float
    _connected: bool
    _down_since: float | None
    _wanting: int
    _margin: float
    _keys: list[str]
    _lease_ms: int
    _secrets: tuple[str, ...]
    _bucket: TokenBucket
    _hold_lock: threading.Lock
    _needs: dict[Callable[[], float], Callable[[], float]]
    _listeners: list[Listener]

    def _lapse(self) -> bool:  # defined by the capacity
        raise NotImplementedError

    # -- the lease thread -------------------------------------------------------------------
    def _loop(self, run: Run) -> None:
        script = run.client.register_script(STEP)
        last_trip = -math.inf
        try:
            while not run.stop.is_set():
                now = time.monotonic()
                want = self._want(run, now)
                if run.stop.is_set():
                    break
                active = want > 0 or self._held > 0 or not self._connected
                if active or now - last_trip >= _IDLE_INTERVAL:
                    last_trip = now
                    self._step(run, script, want)
                wait = self.interval
                if self._valid_until < math.inf:
                    wait = min(wait, max(0.0, self._valid_until - time.monotonic()) + 0.001)
                if run.stop.wait(wait):
                    break
                if time.monotonic() > self._valid_until and self._lapse():
                    self._notify(run, "lease_lapsed")
        finally:
            self._give_up_leases(run, script)

    def _want(self, run: Run, now: float) -> int:
        """Partitions wanted: what the batchers need beyond ``reserved``, the largest of the
        last ``_WANT_MEMORY`` seconds (a backlog that dips for a moment keeps its leases)."""
        needs = self._needs_now(run)
        if needs is None or not math.isfinite(needs):
            needs = run.needs
        run.needs = needs
        raw = math.ceil(max(0.0, needs - self.reserved) / self.partition)
        wants = run.wants
        wants.append((now, min(self.total, raw)))
        while wants[0][0] < now - _WANT_MEMORY:
            wants.popleft()
        return max(w for _, w in wants)

    def _holders_now(self, run: Run) -> tuple[list[Callable[[], float]], list[Listener]] | None:
        """The batchers' ``needs`` and listeners, or None once the capacity is stopping.
        ``Capacity.needs()`` and ``_changed()`` would block on the holders' lock, which
        ``_stop`` holds while it waits for this thread: this thread never blocks on it."""
        while not run.stop.is_set():
            if self._hold_lock.acquire(timeout=_LOCK_POLL):
                try:
                    return list(self._needs.values()), list(self._listeners)
                finally:
                    self._hold_lock.release()
        return None

    def _needs_now(self, run: Run) -> float | None:
        holders = self._holders_now(run)
        try:
            return None if holders is None else sum(need() for need in holders[0])
        except Exception:
            log.exception("RedisSharedCapacity %r: a batcher's needs() failed", self.name)
            return None

    def _notify(self, run: Run, reason: str) -> None:
        """``_changed(reason)`` from the lease thread."""
        holders = self._holders_now(run)
        for listener in [] if holders is None else holders[1]:
            listener(reason)

    def _step(self, run: Run, script: Any, want: int) -> None:
        sent = time.monotonic()
        try:
            held, _alloc, wanting, _free = self._round_trip(run, script, want)
        except Exception as exc:
            self._unreachable(run, exc)
            return
        reason, outage = None, None
        with self._state:
            if run.stop.is_set():
                return
            self._wanting = int(wanting)
            if not self._connected:
                if self._down_since is not None:
                    outage = time.monotonic() - self._down_since
                self._connected, self._down_since = True, None
            held = int(held)
            valid_until = sent + self.lease - self._margin
            if time.monotonic() >= valid_until:  # an answer too late to trust its leases
                held = 0
            if held != self._held:  # tell the batchers only when the rate changes
                reason = "won" if held > self._held else "lost"
                reason = "redis_back" if outage is not None else reason
                self._held = held
                self._bucket.set_rate(self.reserved + held * self.partition)
            self._valid_until = valid_until if held else math.inf
        if outage is not None:
            log.warning(
                "RedisSharedCapacity %r: Redis answers again after %.1f s; leasing partitions "
                "again", self.name, outage,
            )  # fmt: skip
        if reason is not None and not run.stop.is_set():
            self._notify(run, reason)

    def _round_trip(self, run: Run, script: Any, want: int) -> list[int]:
        """One script call: one round trip (two more after a NOSCRIPT, to load it)."""
        with self._state:
            self.round_trips += 1
        result: list[int] = script(
            keys=self._keys, args=[run.id, want, self._lease_ms], client=run.client
        )
        return result

    def _unreachable(self, run: Run, exc: Exception) -> None:
        with self._state:
            if run.stop.is_set():
                return
            first = self._down_since is None
            changed = self._held > 0
            if first:
                self._down_since = time.monotonic()
            self._connected, self._held, self._valid_until = False, 0, math.inf
            self._bucket.set_rate(self.reserved)
        if first and refused_credentials(exc):  # not an outage: nothing heals by itself
            log.error(
                "RedisSharedCapacity %r: Redis refused this client's credentials (%s): a "
                "configuration problem (the URL's user or password), not an outage; writing "
                "at the reserved %g/s and trying again every %g s", self.name,
                describe_error(exc, self._secrets), self.reserved, self.interval,
            )  # fmt: skip
        elif first:
            log.warning(
                "RedisSharedCapacity %r: Redis is unreachable (%s); writing at the reserved "
                "%g/s and trying again every %g s", self.name,
                describe_error(exc, self._secrets), self.reserved, self.interval,
            )  # fmt: skip
        if changed:
            self._notify(run, "redis_unreachable")

    def _give_up_leases(self, run: Run, script: Any) -> None:
        """On the way out: delete this instance's leases and want (best effort; whatever
        is left expires with its lease), and close a client made from a URL."""
        try:
            self._round_trip(run, script, 0)
        except Exception as exc:
            log.debug("RedisSharedCapacity %r: release failed: %s", self.name, type(exc).__name__)
        if run.owned:
            with contextlib.suppress(Exception):
                run.client.close()


def refused_credentials(exc: BaseException) -> bool:
    """Redis said the user or password is wrong (or that it needs one)."""
    text = str(exc)
    return type(exc).__name__.startswith("Authentication") or text.startswith(
        ("NOAUTH", "WRONGPASS")
    )
