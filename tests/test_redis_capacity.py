"""RedisSharedCapacity against a real Redis: validation, the fair split, releasing and
expiring leases, and falling back to the reserved capacity when Redis is gone.

Several instances run in this one process, each with its own lease thread and its own
instance id, on a budget name unique to the test. Demand is fixed: each instance is held by
a fake batcher whose ``needs()`` returns a constant.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import writebehind as wb
from writebehind._clock import MonotonicClock
from writebehind.scale import RedisSharedCapacity

from .redis_server import SHARED_URL, free_port, private_redis, shared_redis

pytestmark = pytest.mark.server

BIG = 1e12  # a backlog that wants every partition


@pytest.fixture
def name() -> Iterator[str]:
    """A budget name of its own for the test; its keys are deleted afterwards."""
    client = shared_redis()
    label = f"test-{uuid.uuid4().hex[:12]}"
    yield label
    keys = list(client.scan_iter(match=f"writebehind:capacity:{{{label}}}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def cap(name: str, url: Any = SHARED_URL, **kw: Any) -> RedisSharedCapacity:
    options: dict[str, Any] = {"shared": 1000, "partition": 100, "lease": 2.0} | kw
    return RedisSharedCapacity(url, name=name, **options)


class Held:
    """A capacity held by a fake batcher that needs ``needs`` (settable); remembers every
    (monotonic time, reason, rate, partitions) it was told about."""

    def __init__(self, capacity: RedisSharedCapacity, needs: float) -> None:
        self.cap, self.need = capacity, needs
        self.heard: list[tuple[float, str, float, int]] = []

    def needs(self) -> float:
        return self.need

    def listener(self, reason: str) -> None:
        d = self.cap.describe()
        self.heard.append((time.monotonic(), reason, d["per_second"], d["partitions"]))

    def __enter__(self) -> Held:
        self.cap.attach(self.needs, self.listener, MonotonicClock())
        return self

    def __exit__(self, *exc: object) -> None:
        self.cap.detach(self.needs, self.listener)

    @property
    def partitions(self) -> int:
        return int(self.cap.describe()["partitions"])


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``cond`` every 10 ms; the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def split(*held: Held) -> list[int]:
    return [h.partitions for h in held]


def partition_owners(client: redis.Redis, name: str, total: int) -> list[Any]:
    keys = [f"writebehind:capacity:{{{name}}}:p:{i}" for i in range(total)]
    return list(client.mget(keys))


# -- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "names"),
    [
        ({"name": ""}, "name"),
        ({"name": "a b"}, "name"),
        ({"name": "x{y}"}, "name"),
        ({"name": 5}, "name"),
        ({"shared": 0}, "shared"),
        ({"shared": float("inf")}, "shared"),
        ({"shared": True}, "shared"),
        ({"reserved": -1}, "reserved"),
        ({"partition": 0}, "partition"),
        ({"partition": 2000}, "partition"),
        ({"partition": 0.5}, "partition"),  # 2,000 partitions
        ({"lease": 0}, "lease"),
        ({"lease": 0.001}, "lease"),  # cannot be renewed over a network
        ({"lease": 1e308}, "lease"),
        ({"lease": 10**400}, "lease"),
        ({"shared": 10**400}, "shared"),
        ({"lease": float("nan")}, "lease"),
        ({"interval": 0}, "interval"),
        ({"interval": 0.001}, "interval"),
        ({"interval": 1.0}, "interval"),  # more than lease / 3
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(kw: dict[str, Any], names: str) -> None:
    """Each bad argument raises ConfigError whose message starts with its name."""
    options: dict[str, Any] = {"name": "orders-db", "shared": 1000, "partition": 100,
                               "lease": 2.0} | kw  # fmt: skip
    with pytest.raises(wb.ConfigError, match=f"^{names}: "):
        RedisSharedCapacity(SHARED_URL, **options)


def test_a_bad_url_is_refused_without_showing_its_password() -> None:
    """A URL redis-py cannot use is a ConfigError naming redis_url; its password never shows,
    and neither does anything but a client or a URL."""
    for url in ("http://:s3cretpw@host/0", "redis://:s3cretpw@host:port/0"):
        with pytest.raises(wb.ConfigError, match=r"^redis_url: ") as info:
            RedisSharedCapacity(url, name="n", shared=10, partition=1)
        assert "s3cretpw" not in str(info.value)
    with pytest.raises(wb.ConfigError, match=r"^redis_url: "):
        RedisSharedCapacity(42, name="n", shared=10, partition=1)  # type: ignore[arg-type]


def test_the_constructor_does_no_io_and_shows_no_url() -> None:
    """Built against a closed port, it neither connects nor fails; before it starts it
    grants its reserved capacity only; repr and describe() hold no URL or password."""
    url = f"redis://:s3cretpw@127.0.0.1:{free_port()}/0"
    c = RedisSharedCapacity(url, name="orders-db", shared=18_000, reserved=2_000,
                            partition=1_000, lease=15.0)  # fmt: skip
    assert c.rate == 2_000
    assert c.max_cost == 20_000
    assert c.total == 18
    assert c.interval == 0.25
    d = c.describe()
    assert d["connected"] is False
    assert d["partitions"] == 0
    assert d["partitions_total"] == 18
    assert d["reserved"] == 2_000
    assert d["round_trips"] == 0
    for text in (repr(c), str(d)):
        assert "s3cretpw" not in text
        assert "127.0.0.1" not in text


def test_with_no_reserved_capacity_and_no_partition_nothing_is_granted() -> None:
    """reserved=0 and no partition held: rate 0, take() grants nothing and wait_for() says
    None (the batchers wait for a change of rate)."""
    c = cap("unstarted", reserved=0)
    assert c.rate == 0
    assert c.take(1, 10) is None
    assert c.wait_for(1) is None


# -- the fair split ------------------------------------------------------------------------
def test_two_instances_wanting_everything_split_five_and_five(name: str) -> None:
    """Two instances, 10 partitions, both wanting all: 5/5 within a few steps, and it stays
    so (each step extends the same leases)."""
    with Held(cap(name), BIG) as a:
        wait_until(lambda: a.partitions == 10, 1.0, "a alone leases all 10")
        with Held(cap(name), BIG) as b:
            took = wait_until(lambda: split(a, b) == [5, 5], 1.5, f"5/5, got {split(a, b)}")
            for _ in range(20):  # a second: nothing moves
                time.sleep(0.05)
                assert split(a, b) == [5, 5]
            assert a.cap.rate == b.cap.rate == 500
    assert took < 1.0
    assert [r for _, r, _, _ in a.heard] == ["won", "lost"]  # 10, then 5
    assert [r for _, r, _, _ in b.heard] == ["won"]


def test_a_small_want_is_met_and_the_rest_goes_to_the_other(name: str) -> None:
    """One wanting 2 partitions (a backlog of 150 units beyond its reserved 50), the other
    everything: 2/8."""
    with Held(cap(name, reserved=50), 200) as small, Held(cap(name), BIG) as big:
        wait_until(lambda: split(small, big) == [2, 8], 1.5, f"2/8, got {split(small, big)}")
        assert small.cap.rate == 250
        assert big.cap.rate == 800


def test_three_instances_split_four_three_three(name: str) -> None:
    """Three instances wanting everything of 10: 4/3/3, the odd one stays where it is."""
    with Held(cap(name), BIG) as a, Held(cap(name), BIG) as b, Held(cap(name), BIG) as c:
        wait_until(lambda: sorted(split(a, b, c)) == [3, 3, 4], 1.5, f"{split(a, b, c)}")
        first = split(a, b, c)
        time.sleep(0.6)
        assert split(a, b, c) == first
        assert a.cap.describe()["instances"] == 3


def test_an_instance_takes_more_only_as_others_want_less(name: str) -> None:
    """When one instance's backlog shrinks, it gives up what it no longer wants (within
    about a second) and the other, waiting for more, takes it."""
    with Held(cap(name), BIG) as a, Held(cap(name), BIG) as b:
        wait_until(lambda: split(a, b) == [5, 5], 1.5, "5/5")
        a.need = 100  # one partition's worth
        wait_until(lambda: split(a, b) == [1, 9], 2.5, f"1/9, got {split(a, b)}")
        a.need = 0
        wait_until(lambda: split(a, b) == [0, 10], 2.5, f"0/10, got {split(a, b)}")
        assert a.cap.rate == 0


def test_a_newcomer_gets_its_share_in_a_step_or_two(name: str) -> None:
    """One instance holds every partition with a long lease; a second arrives and has its
    half well before any lease could expire."""
    with Held(cap(name, lease=30.0), BIG) as a:
        wait_until(lambda: a.partitions == 10, 1.0, "a leases all 10")
        with Held(cap(name, lease=30.0), BIG) as b:
            took = wait_until(lambda: split(a, b) == [5, 5], 2.0, "5/5")
    assert took < 1.0, took


# -- giving leases back ----------------------------------------------------------------------
def test_an_instance_that_stops_deletes_its_leases_at_once(name: str) -> None:
    """Stopping deletes the instance's partition keys and its want at once (lease 30 s), and
    the other takes them at its next step."""
    client = shared_redis()
    a, b = Held(cap(name, lease=30.0), BIG), Held(cap(name, lease=30.0), BIG)
    with a, b:
        wait_until(lambda: split(a, b) == [5, 5], 1.5, "5/5")
        started = time.monotonic()
        a.__exit__()
        stopped = time.monotonic() - started
        assert a.cap.rate == 0
        owners = partition_owners(client, name, 10)
        assert owners.count(None) == 5, owners  # deleted by a as it stopped
        wait_until(lambda: b.partitions == 10, 1.0, "b takes the other 5")
        a.__enter__()  # held again (a new instance id): it wins its half back
        wait_until(lambda: split(a, b) == [5, 5], 1.5, "5/5 again")
    assert stopped < 0.5, stopped
    assert partition_owners(client, name, 10) == [None] * 10
    assert client.hlen(f"writebehind:capacity:{{{name}}}:wants") == 0


def test_leases_expire_when_an_instance_stops_stepping(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance whose lease thread hangs keeps no lease: its rate drops to reserved once
    its leases may have expired (it checks whenever a batcher takes credit), and only after
    that does the other instance, which waits for them, get them."""
    a, b = Held(cap(name, lease=1.0, reserved=10), BIG), Held(cap(name, lease=1.0), BIG)
    release = threading.Event()
    real = a.cap._round_trip

    def hang(*args: Any) -> list[int]:
        release.wait(10)
        return real(*args)

    with a, b:
        wait_until(lambda: split(a, b) == [5, 5], 1.5, "5/5")
        monkeypatch.setattr(a.cap, "_round_trip", hang)
        frozen = time.monotonic()
        while a.cap.rate > 10 and time.monotonic() - frozen < 3:
            a.cap.wait_for(1)  # a batcher asking: notices the leases are stale
            time.sleep(0.005)
        dropped = time.monotonic() - frozen
        wait_until(lambda: b.partitions == 10, 2.0, "b takes a's expired leases")
        b_won = max(t for t, r, _, p in b.heard if r == "won") - frozen
        release.set()
    assert a.cap.rate == 10
    assert dropped <= 1.0, dropped  # lease 1 s less a margin of 0.2 s, after the last step
    assert ("lease_lapsed", 10) in [(r, s) for _, r, s, _ in a.heard]
    assert b_won > dropped, (b_won, dropped)  # never both at once
    assert b_won < 1.0 + 0.5, b_won  # expired a lease after a's last step, next step of b


# -- Redis gone ----------------------------------------------------------------------------
def test_redis_unreachable_means_reserved_capacity_and_one_warning(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With nothing listening, the rate stays at reserved, it keeps trying every interval,
    and it logs one warning naming the capacity, not the URL or its password."""
    url = f"redis://:s3cretpw@127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.DEBUG, logger="writebehind")
    with Held(cap(name, url, reserved=100), BIG) as a:
        time.sleep(1.2)
        assert a.cap.rate == 100
        assert a.cap.take(1, 1e9) == pytest.approx(100, rel=0.01)  # one second of reserved
        d = a.cap.describe()
    assert d["connected"] is False
    assert d["round_trips"] >= 4  # tried every 0.25 s
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert name in warnings[0].getMessage()
    assert "unreachable" in warnings[0].getMessage()
    assert "s3cretpw" not in caplog.text
    assert url not in caplog.text
    assert a.heard == []  # the rate never changed


def test_a_redis_that_dies_and_returns(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """A private server: leases, then SIGKILL (rate = reserved within a step, one warning
    however long it is down), then a restart on the same port (partitions again)."""
    caplog.set_level(logging.INFO, logger="writebehind")
    with private_redis() as server, Held(cap(name, server.url, reserved=100), BIG) as a:
        wait_until(lambda: a.cap.rate == 1100, 1.0, "all 10 partitions and reserved")
        server.kill()
        killed = time.monotonic()
        down = wait_until(lambda: a.cap.rate == 100, 1.0, "reserved only")
        time.sleep(1.5)
        assert a.cap.rate == 100
        assert a.cap.describe()["connected"] is False
        back = server.start()
        recovered = wait_until(lambda: a.cap.rate == 1100, 1.5, "leased again")
        assert a.cap.describe()["connected"] is True
    assert down <= 0.6, down  # the next step (0.25 s) fails at once
    assert recovered <= 1.0, recovered
    reasons = [r for t, r, _, _ in a.heard if t >= killed]
    assert reasons == ["redis_unreachable", "redis_back"], reasons
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in messages if "unreachable" in m]) == 1, messages
    assert any("answers again" in m for m in messages), messages
    assert back > killed


def test_a_client_instance_is_used_and_left_open(name: str) -> None:
    """A redis.Redis of the caller's works as well, and is not closed at stop."""
    client = redis.Redis.from_url(SHARED_URL, socket_timeout=0.5)
    with Held(cap(name, client), BIG) as a:
        wait_until(lambda: a.partitions == 10, 1.0, "all 10")
    assert client.ping()
    client.close()


# -- rates and round trips ----------------------------------------------------------------------
def test_winning_partitions_adds_rate_not_credit(name: str) -> None:
    """An instance starts with one second of its reserved credit only; winning partitions
    raises the rate, not the credit: what it can take is that second plus what accrued."""
    with Held(cap(name, reserved=10), BIG) as a:
        attached = time.monotonic()
        wait_until(lambda: a.partitions == 10, 1.0, "all 10")
        granted = a.cap.take(1, 1e9)  # a take waits for 0.1 s of credit (101 at 1,010/s)
        while granted is None:
            time.sleep(0.005)
            granted = a.cap.take(1, 1e9)
        took = time.monotonic()
    won = a.heard[0][0]
    assert granted <= 10 + 10 * (won - attached) + 1010 * (took - won) + 1e-6
    assert granted < 500, granted  # never a second of the shared rate (1,000) on top


def test_round_trips_about_four_a_second_active_one_idle(name: str) -> None:
    """A step (one round trip) every 0.25 s while it wants or holds partitions; once a
    second when it wants nothing and holds nothing."""
    with Held(cap(name), BIG) as a:
        time.sleep(0.1)
        before = a.cap.round_trips
        time.sleep(2.0)
        active = (a.cap.round_trips - before) / 2.0
        a.need = 0
        time.sleep(1.5)  # the want is remembered a second, then the leases go
        before = a.cap.round_trips
        time.sleep(3.0)
        idle = (a.cap.round_trips - before) / 3.0
    assert 3.3 <= active <= 4.1, active
    assert 0.6 <= idle <= 1.1, idle


def test_an_asyncio_client_is_refused_at_construction() -> None:
    """A redis.asyncio client was accepted, then every lease step failed with a TypeError
    logged as 'Redis is unreachable' (the rate stuck at reserved)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(SHARED_URL)
    with pytest.raises(wb.ConfigError, match=r"redis\.asyncio client"):
        RedisSharedCapacity(client, name="x", shared=100, partition=10)


def test_a_stop_with_redis_stalled_returns_within_a_quarter_second(name: str) -> None:
    """A stop may run on a batcher's event loop: it waited for the lease thread up to two
    socket timeouts plus 0.5 s (2.46 s for lease=3 with Redis in DEBUG SLEEP). The thread
    still releases the leases once Redis answers."""
    with private_redis() as server:
        client = redis.Redis(port=server.port, socket_timeout=5)
        held = Held(cap(name, f"redis://127.0.0.1:{server.port}/0", lease=3.0), BIG)
        with held:
            wait_until(lambda: held.partitions == 10, 2.0, "all 10")
            stall = threading.Thread(target=lambda: _debug_sleep(server.port, 2.0))
            stall.start()
            time.sleep(0.2)
            started = time.monotonic()
        stopped = time.monotonic() - started
        stall.join()
        assert stopped < 0.4, stopped
        wait_until(
            lambda: partition_owners(client, name, 10) == [None] * 10, 5.0, "leases released"
        )
        client.close()


def _debug_sleep(port: int, seconds: float) -> None:
    c = redis.Redis(port=port, socket_timeout=seconds + 5)
    try:
        c.execute_command("DEBUG", "SLEEP", seconds)
    finally:
        c.close()


def test_a_forked_child_leases_for_itself(name: str) -> None:
    """gunicorn --preload: a process holding a capacity forks. The child's capacity starts
    afresh (at its reserved rate, no holders, none of the parent's leases or thread); its
    first batcher starts a lease run of its own and the parent and child split the
    partitions. Before, the child wrote on the parent's leases (the fleet at 2x) and, once
    they lapsed, stayed at reserved for good."""
    import os

    capacity = cap(name, reserved=1)
    parent = Held(capacity, BIG)
    with parent:
        wait_until(lambda: parent.partitions == 10, 2.0, "the parent holds all 10")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running the parent's cleanup
            code = 1
            try:
                fresh = (capacity.rate, capacity._holders, capacity._run)
                child = Held(capacity, BIG)
                with child:
                    deadline = time.monotonic() + 5
                    while child.partitions < 5 and time.monotonic() < deadline:
                        time.sleep(0.02)
                    got = child.partitions
                os.write(write, f"{fresh[0]} {fresh[1]} {fresh[2] is None} {got}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        report = os.read(read, 200).decode().split()
        os.close(read)
    assert status == 0, report
    rate, holders, no_run, got = report
    assert (float(rate), int(holders), no_run) == (1.0, 0, "True")  # afresh, at reserved
    assert int(got) == 5  # its own run won its share from the parent


def test_wrong_credentials_are_a_configuration_problem_not_an_outage() -> None:
    """A wrong password was logged as 'Redis is unreachable' (a transient outage); it is
    logged at ERROR as a configuration problem."""
    from writebehind.scale._lease_thread import refused_credentials as _refused_credentials

    assert _refused_credentials(redis.AuthenticationError("invalid password"))
    assert _refused_credentials(redis.ResponseError("WRONGPASS invalid username-password"))
    assert _refused_credentials(redis.ResponseError("NOAUTH Authentication required."))
    assert not _refused_credentials(redis.ConnectionError("Connection refused"))
