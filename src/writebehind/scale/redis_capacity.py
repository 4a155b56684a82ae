"""``RedisSharedCapacity``: one write budget for a fleet, leased in partitions through Redis.

The model is go-batcher's ``AzureSharedResource`` (partitions of a shared capacity leased
exclusively with an expiry, plus capacity reserved per instance that needs no lease), with
Redis keys in place of blob leases. The lease step is one Lua script (``_lease_script``);
this module runs it from a thread of its own and turns its answers into the rate of the
capacity's token bucket.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from .._capacity import Capacity
from .._clock import Clock
from .._errors import ConfigError
from .._redact import describe as describe_error
from .._redact import secrets_of
from .._retry import check_number
from ._lease_thread import LeaseSteps, Run

if TYPE_CHECKING:
    import redis

__all__ = ["RedisSharedCapacity"]

log = logging.getLogger("writebehind")

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_MAX_PARTITIONS = 1000  # every step reads every partition key
_MIN_LEASE, _MAX_LEASE = 1.0, 86_400.0  # seconds: shorter cannot be renewed over a network
_MIN_INTERVAL = 0.01  # seconds between lease steps, at least
_STOP_WAIT = 0.25  # seconds a stop waits for the lease thread (it may be on the event loop)


def _import_redis() -> Any:
    try:
        import redis
        import redis.connection
    except ImportError as exc:
        raise ImportError(
            "RedisSharedCapacity needs redis-py: pip install 'writebehind[redis]'"
        ) from exc
    return redis


class RedisSharedCapacity(LeaseSteps, Capacity):
    """A budget of ``shared`` cost units per second for a whole fleet, plus ``reserved``
    per instance, leased in partitions through Redis (``pip install 'writebehind[redis]'``).

    ``shared // partition`` partitions, each worth ``partition`` units per second (a
    remainder of ``shared`` is not used), are Redis keys holding their owner's id that expire
    ``lease`` seconds after they were last taken or extended, by the Redis server's clock.
    This instance's rate is ``reserved + partitions held * partition``; ``reserved`` needs no
    lease. Like every capacity it is a token bucket holding at most one second of credit, so
    the fleet writes at most ``shared`` plus each instance's ``reserved`` per second, plus at
    most one second's worth of burst.

    From its own daemon thread, about every ``interval`` seconds while it wants or holds
    partitions (once a second when idle), an instance runs one Lua script (one round trip):
    it states how many partitions it wants (what its batchers need, ``needs()``, beyond
    ``reserved``, in partitions: ``ceil((needs - reserved) / partition)``), and the script
    allots the partitions max-min fairly among the instances that want some. An instance
    above its share releases the excess at once when another waits (its leases are not
    extended), one at its share takes no more while others want more, and one below takes
    free partitions. So the fleet converges to a fair split within a step or two, and a
    partition it no longer wants (for a second) is released. An instance that stops gives
    its partitions back at once; one that dies gives them back when their leases expire.

    An instance asks only for what its batchers' backlog costs: for one instance to be able
    to use the whole budget, its batchers must be able to hold that much (``max_pending``
    times the records' cost at least ``shared + reserved``). A record costing more than
    ``shared + reserved`` (``max_cost``) is refused at ``add()`` with ``RecordError``.

    Losing Redis never raises the fleet's rate: on any Redis error the rate drops to
    ``reserved`` at once (with ``reserved=0`` the instance writes nothing until Redis
    answers; one warning per outage on the ``writebehind`` logger), and a
    step is tried again every ``interval``; when Redis answers, partitions are leased
    again. Leases not extended for ``lease`` less a margin are presumed gone, whatever the
    thread is doing. Each rate change wakes the batchers, which publish ``CapacityChanged``
    (reasons ``won``, ``lost``, ``redis_unreachable``, ``redis_back``, ``lease_lapsed``).

    Args:
        redis_url: a ``redis://`` or ``rediss://`` URL, or a ``redis.Redis`` client (used
            from the capacity's thread, never closed by it; give it a short
            ``socket_timeout``). The URL and its password never appear in logs or errors.
        name: the budget's name (letters, digits, ``_.:-``; 100 at most): every instance
            naming it shares it. Keys are ``writebehind:capacity:{name}:...``.
        shared: cost units per second that the fleet shares; > 0.
        reserved: cost units per second this instance has without a lease; >= 0.
        partition: units per second of one partition; > 0, at most ``shared``, and at
            most 1,000 partitions.
        lease: seconds a partition stays leased without being extended; > 0.
        interval: seconds between two lease steps while active (default the lesser of
            0.25 and ``lease / 4``); > 0 and at most ``lease / 3``.
        clock: the token bucket's clock (default: that of the first batcher using it).
            Leases run on the real monotonic clock.
    """

    def __init__(
        self,
        redis_url: str | redis.Redis,
        *,
        name: str,
        shared: float,
        reserved: float = 0,
        partition: float,
        lease: float = 15.0,
        interval: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"name: must be 1 to 100 letters, digits or '_.:-' (it is part of Redis "
                f"keys), got {name!r}"
            )
        check_number("shared", shared, minimum=0, inclusive=False, finite=True)
        check_number("reserved", reserved, minimum=0, finite=True)
        check_number("partition", partition, minimum=0, inclusive=False, finite=True)
        if partition > shared:
            raise ConfigError(f"partition: must be at most shared ({shared:g}), got {partition:g}")
        if shared // partition > _MAX_PARTITIONS:
            raise ConfigError(
                f"partition: shared // partition must be at most {_MAX_PARTITIONS} partitions, "
                f"got {int(shared // partition)} (partition={partition:g}); use larger ones"
            )
        check_number("lease", lease, minimum=_MIN_LEASE, finite=True)
        if lease > _MAX_LEASE:
            raise ConfigError(f"lease: must be at most {_MAX_LEASE:g} s (a day), got {lease!r}")
        if interval is None:
            interval = min(0.25, lease / 4)
        check_number("interval", interval, minimum=_MIN_INTERVAL, finite=True)
        if interval > lease / 3:
            raise ConfigError(
                f"interval: must be at most lease / 3 ({lease / 3:g} s: a lease is extended "
                f"several times before it expires), got {interval!r}"
            )
        if isinstance(redis_url, str):
            self._secrets = secrets_of(redis_url)
            try:
                _import_redis().connection.parse_url(redis_url)
            except ValueError as exc:
                why = describe_error(exc, self._secrets, withhold=bool(self._secrets))
                raise ConfigError(f"redis_url: not a Redis URL ({why})") from None
        elif inspect.iscoroutinefunction(getattr(redis_url, "execute_command", None)):
            raise ConfigError(
                "redis_url: a redis.asyncio client cannot be used: the capacity leases from a "
                "thread of its own. Pass a redis:// URL, or a sync redis.Redis client"
            )
        elif callable(getattr(redis_url, "register_script", None)):
            self._secrets = ()
        else:
            raise ConfigError(
                f"redis_url: must be a redis:// URL or a redis.Redis client, got "
                f"{type(redis_url).__name__}"
            )
        self._source = redis_url
        self.name = name
        self.shared, self.reserved = float(shared), float(reserved)
        self.partition, self.lease, self.interval = float(partition), float(lease), interval
        self.total = int(shared // partition)
        self._keys = [f"writebehind:capacity:{{{name}}}:{k}" for k in ("wants", "seen")]
        self._keys += [f"writebehind:capacity:{{{name}}}:p:{i}" for i in range(self.total)]
        self._lease_ms = max(1, round(lease * 1000))
        self._timeout = min(1.0, lease / 4)  # the socket timeout of a client made from a URL
        self._margin = min(lease / 5, 1.0)  # leases are presumed gone this long before expiry
        super().__init__(self.reserved, clock, full=True)
        self._state = threading.Lock()
        self._run: Run | None = None
        self._held = 0
        self._valid_until = math.inf  # monotonic: the leases held are presumed gone after
        self._connected = False
        self._down_since: float | None = None
        self._wanting = 0
        self.round_trips = 0

    @property
    def max_cost(self) -> float:
        return self.shared + self.reserved

    def __repr__(self) -> str:
        return (
            f"RedisSharedCapacity(name={self.name!r}, shared={self.shared:g}, "
            f"reserved={self.reserved:g}, partition={self.partition:g}, lease={self.lease:g})"
        )

    def describe(self) -> dict[str, Any]:
        with self._state:
            return {
                "name": self.name,
                "per_second": self.rate,
                "partitions": self._held,
                "partitions_total": self.total,
                "partition": self.partition,
                "reserved": self.reserved,
                "connected": self._connected,
                "instances": self._wanting,
                "round_trips": self.round_trips,
            }

    # -- start and stop (the holders' lock is held) -------------------------------------------
    def _start(self) -> None:
        if isinstance(self._source, str):
            client, owned = self._connect(self._source), True
        else:
            client, owned = self._source, False
        run = Run(client, owned)
        self._down_since = None
        run.thread = threading.Thread(
            target=self._loop, args=(run,), name=f"writebehind-capacity[{self.name}]", daemon=True
        )
        self._run = run
        run.thread.start()

    def _connect(self, url: str) -> Any:
        """A client for ``url`` that fails fast (no I/O here: it connects on first use)."""
        redis = _import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(
            url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=f"writebehind-capacity-{self.name}",
        )

    def _stop(self) -> None:
        """Stop the thread (it deletes this instance's leases and want on its way out) and
        wait for it a bounded time. The rate is ``reserved`` at once."""
        run, self._run = self._run, None
        if run is None:
            return
        with self._state:
            run.stop.set()  # under the lock: the thread applies no step after this
            held, self._held, self._valid_until = self._held, 0, math.inf
            self._connected = False
            self._bucket.set_rate(self.reserved)
        assert run.thread is not None
        # a stop may run on a batcher's event loop: wait briefly. A thread still talking to
        # a slow Redis deletes this instance's leases when it can (or they expire).
        run.thread.join(_STOP_WAIT)
        if run.thread.is_alive():
            log.debug(
                "RedisSharedCapacity %r: the lease thread is still ending; its %d "
                "partition(s) are released when Redis answers, or expire", self.name, held,
            )  # fmt: skip

    def _after_fork(self) -> None:
        """In a forked child: the parent's leases, thread and client are not this
        process's. Start afresh (at the reserved rate); the child's first batcher starts a
        lease run of its own, under a new instance id."""
        self._state = threading.Lock()
        self._run = None
        self._held, self._valid_until = 0, math.inf
        self._connected, self._down_since, self._wanting = False, None, 0
        self._bucket.set_rate(self.reserved)

    # -- spending: leases presumed gone when not extended in time -------------------------------
    def take(self, minimum: float, maximum: float, who: object = None) -> float | None:
        self._check_leases()
        return self._bucket.take(minimum, maximum, who)

    def spend(self, amount: float) -> None:
        self._check_leases()
        self._bucket.spend(amount)

    def wait_for(
        self, minimum: float, who: object = None, maximum: float | None = None
    ) -> float | None:
        self._check_leases()
        return self._bucket.wait_for(minimum, who, maximum)

    def _check_leases(self) -> None:  # a batcher's thread
        if time.monotonic() > self._valid_until and self._lapse():
            self._changed("lease_lapsed")

    def _lapse(self) -> bool:
        """Drop to ``reserved`` if the leases held were not extended in time; whether it
        did (the caller then tells the batchers)."""
        with self._state:
            if time.monotonic() <= self._valid_until:
                return False
            self._held, self._valid_until = 0, math.inf
            self._bucket.set_rate(self.reserved)
        log.warning(
            "RedisSharedCapacity %r: no lease step for %g s; its partitions are presumed lost",
            self.name, self.lease - self._margin,
        )  # fmt: skip
        return True
