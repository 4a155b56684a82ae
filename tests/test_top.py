"""The local stats endpoint (``writebehind.integrations.serve``) and ``writebehind top``."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import writebehind as wb
from tests.conftest import assert_conserved, settle
from writebehind.cli._top_client import Client, Unreachable
from writebehind.cli._top_model import STATE_ORDER, Endpoint, Fleet, sum_docs
from writebehind.cli._top_view import _STATE_STYLE, TopView
from writebehind.cli.main import main
from writebehind.integrations import _wire
from writebehind.integrations.prometheus import SINK_STATES as METRIC_STATES
from writebehind.integrations.serve import SCHEMA, StatsServer, jsonable, serve, serve_sync
from writebehind.testing import FlakySink, MemorySink


def get(url: str) -> tuple[int, dict[str, Any]]:
    """``GET url`` (blocking): status and JSON body."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode()}


def expected_stats(stats: wb.Stats) -> dict[str, Any]:
    doc: dict[str, Any] = jsonable(stats)
    doc["held"] = stats.held
    return doc


async def raw(server: StatsServer, request: bytes) -> tuple[int, bytes, bytes]:
    """Send ``request`` bytes as they are; the status, the head and the body of the answer."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body


async def open_stream(
    server: StatsServer, query: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"GET /events{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert b"application/x-ndjson" in head
    return reader, writer


async def read_until(reader: asyncio.StreamReader, last: int) -> list[dict[str, Any]]:
    """Event lines until the one with index ``last``."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while not got or got[-1].get("index") != last:
            got.append(json.loads(await reader.readline()))
    return got


@asynccontextmanager
async def endpoint(
    sink: Any = None, **options: Any
) -> AsyncIterator[tuple[wb.AsyncBatcher, StatsServer]]:
    options = {"key": "id", "max_batch": 10, "linger": 0.01, **options}
    async with (
        wb.AsyncBatcher(sink or MemorySink(), **options) as batcher,
        await serve(batcher) as server,
    ):
        yield batcher, server


@pytest.fixture
def sync_endpoint() -> Iterator[tuple[wb.Batcher, str]]:
    """A thread-backed Batcher with its endpoint (closed before the batcher)."""
    sink = FlakySink(fail_first=1, poison=lambda r: r["id"] == 7)
    with (
        wb.Batcher(sink, key="id", max_batch=20, linger=0.01, name="sync-one") as batcher,
        serve_sync(batcher) as server,
    ):
        yield batcher, server.url


def last_event(batcher: wb.AsyncBatcher) -> int:
    """The index of the last event published."""
    return batcher.events(since=None).started_at - 1


async def workload(batcher: wb.AsyncBatcher, n: int = 500, keys: int = 120) -> None:
    for i in range(n):
        await batcher.add({"id": i % keys, "n": i})
    await batcher.flush()


# -- the endpoint ---------------------------------------------------------------------------
async def test_stats_match_after_a_workload() -> None:
    """``GET /stats`` is ``stats()`` (plus held), the name, the config, and the event indices."""
    async with endpoint(name="agents") as (batcher, server):
        await workload(batcher)
        status, doc = await asyncio.to_thread(get, server.url + "/stats")
        assert status == 200
        assert doc["stats"] == expected_stats(batcher.stats())
        assert doc["stats"]["accepted"] == 500
        assert (doc["schema"], doc["batcher"], doc["state"]) == (SCHEMA, "agents", "healthy")
        assert doc["config"]["max_batch"] == batcher._opts.max_batch
        assert doc["config"]["max_pending"] == batcher._opts.max_pending
        assert doc["events"] == {"oldest": 1, "next": last_event(batcher) + 1}
        assert (await asyncio.to_thread(get, server.url + "/health"))[1]["status"] == "ok"


class Throttled:
    """A sink that always asks to be retried in a minute."""

    async def write(self, batch: Any) -> None:
        raise wb.RetriableSinkError("slow down", retry_after=60)


async def test_the_state_uses_the_engines_words() -> None:
    """``state`` in ``/stats`` is ``Stats.sink_state`` while the batcher runs (here
    ``throttled``, not some other word for it), ``not started`` before it starts and
    ``closed`` after (also when it never started); ``/health`` is ok whatever the sink's
    health."""
    batcher = wb.AsyncBatcher(Throttled(), key="id", linger=0.001, close_timeout=0.1)
    assert _wire.snapshot(batcher)["state"] == "not started"
    assert _wire.health(batcher) == (503, {"schema": SCHEMA, "status": "not started",
                                           "batcher": "default"})  # fmt: skip
    async with batcher, await serve(batcher) as server:
        status, doc = await asyncio.to_thread(get, server.url + "/stats")
        assert (status, doc["state"]) == (200, "healthy")
        batcher.add_nowait({"id": 1})
        await settle(lambda: batcher.stats().sink_state == "throttled")
        status, doc = await asyncio.to_thread(get, server.url + "/stats")
        assert (doc["state"], doc["stats"]["sink_state"]) == ("throttled", "throttled")
        assert (await asyncio.to_thread(get, server.url + "/health"))[1]["status"] == "ok"
    assert _wire.snapshot(batcher)["state"] == "closed"
    assert _wire.health(batcher)[1]["status"] == "closed"
    never = wb.AsyncBatcher(MemorySink())
    await never.close()
    assert (_wire.snapshot(never)["state"], _wire.health(never)) == (
        "closed",
        (503, {"schema": SCHEMA, "status": "closed", "batcher": "default"}),
    )  # closed before it started: it never will


def test_one_vocabulary_for_the_state() -> None:
    """The wire's states are the engine's sink states (as the metrics name them) plus
    ``not started`` and ``closed``; top orders and colours every one of them."""
    assert _wire.SINK_STATES == METRIC_STATES == ("healthy", "throttled", "failing")
    assert set(_wire.STATES) == {*_wire.SINK_STATES, "not started", "closed"}
    assert {*STATE_ORDER, "closed"} == set(_wire.STATES) == set(_STATE_STYLE)


def test_sync_batcher_stats_and_events(sync_endpoint: tuple[wb.Batcher, str]) -> None:
    """The sync form serves a thread-backed Batcher: stats match after a workload with
    retries and a dead letter, and ``/events`` (follow=0) holds every event in order."""
    batcher, url = sync_endpoint
    for i in range(300):
        batcher.add({"id": i % 50})
    batcher.flush()
    status, doc = get(url + "/stats")
    assert status == 200
    assert doc["stats"] == expected_stats(batcher.stats())
    assert doc["stats"]["dead_lettered"] >= 1
    assert doc["batcher"] == "sync-one"
    with urllib.request.urlopen(url + "/events?since=0&follow=0", timeout=5) as response:
        lines = [json.loads(line) for line in response.read().splitlines()]
    indices = [e["index"] for e in lines]
    assert indices == list(range(1, doc["events"]["next"]))
    assert {"BatchFailed", "RetryScheduled", "RecordsDeadLettered"} <= {e["type"] for e in lines}


async def test_events_stream_in_order_without_gaps() -> None:
    """A following reader gets every event in order with no gaps; ``since`` starts where
    asked; the stream ends after ``Closed``, whose report is nested."""
    async with endpoint() as (batcher, server):
        reader, writer = await open_stream(server, "?since=1")
        await workload(batcher)
        last = last_event(batcher)
        got = await read_until(reader, last)
        assert [e["index"] for e in got] == list(range(1, last + 1))
        commits = [e for e in got if e["type"] == "BatchCommitted"]
        assert sum(e["size"] for e in commits) == batcher.stats().committed

        late, late_writer = await open_stream(server, f"?since={last - 2}&follow=0")
        async with asyncio.timeout(5):
            body = await late.read()  # follow=0: the response ends
        assert [json.loads(x)["index"] for x in body.splitlines()] == [last - 2, last - 1, last]
        late_writer.close()
        await late_writer.wait_closed()
        await batcher.close()
    async with asyncio.timeout(5):
        rest = [json.loads(x) for x in (await reader.read()).splitlines()]
    assert rest[-1]["type"] == "Closed"
    assert rest[-1]["index"] == last + 1
    assert rest[-1]["report"]["lost"] == 0
    assert rest[-1]["report"]["stats"]["accepted"] == 500
    assert server.closed
    writer.close()
    await writer.wait_closed()


async def test_bad_requests() -> None:
    """Malformed requests are 400, unknown paths 404, other methods 405 (with Allow),
    oversized headers 431, a foreign Host 403; each with a short text body."""
    async with endpoint() as (_, server):
        host = b"Host: 127.0.0.1\r\n"
        cases = [
            (b"GET /stats HTTP/1.1\r\n" + host + b"\r\n", 200),
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET /stats HTTP/2.0\r\n" + host + b"\r\n", 400),
            (b"GET /stats HTTP/1.1\r\n\r\n", 400),  # no Host
            (b"GET /events?since=-1 HTTP/1.1\r\n" + host + b"\r\n", 400),
            (b"GET /events?since=x HTTP/1.1\r\n" + host + b"\r\n", 400),
            (b"GET /events?follow=2 HTTP/1.1\r\n" + host + b"\r\n", 400),
            (b"GET /stats?verbose=1 HTTP/1.1\r\n" + host + b"\r\n", 400),
            (b"GET /stats HTTP/1.1\r\n" + host + b"Content-Length: 3\r\n\r\nabc", 400),
            (b"GET /stats HTTP/1.1\r\n" + host + b"Bad Header: x\r\n\r\n", 400),
            (b"GET /nowhere HTTP/1.1\r\n" + host + b"\r\n", 404),
            (b"POST /stats HTTP/1.1\r\n" + host + b"\r\n", 405),
            (b"DELETE /events HTTP/1.1\r\n" + host + b"\r\n", 405),
            (b"GET /stats HTTP/1.1\r\n" + host + b"X-A: 1\r\n" * 40 + b"\r\n", 431),
            (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n" + host + b"\r\n", 414),
            (b"GET /stats HTTP/1.1\r\nHost: evil.example:80\r\n\r\n", 403),
        ]
        for request, status in cases:
            got, head, body = await raw(server, request)
            assert got == status, (request[:40], head, body)
            if status != 200:
                assert body.startswith(str(status).encode()), body
                assert len(body) < 200
            if status == 405:
                assert b"\r\nAllow: GET" in head


async def test_default_bind_is_loopback_and_other_hosts_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """By default the endpoint listens on 127.0.0.1; another host is logged as a WARNING."""
    async with endpoint() as (batcher, server):
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert not caplog.records
        with caplog.at_level(logging.WARNING, logger="writebehind"):
            async with await serve(batcher, host="0.0.0.0"):
                pass
        assert any("no authentication" in r.getMessage() for r in caplog.records)
        with pytest.raises(wb.ConfigError, match="port"):
            await serve(batcher, port=70000)


def stuck_stream(server: StatsServer) -> asyncio.StreamWriter:
    """The server side of the first connection (the stuck client's)."""
    return next(iter(server._conns.values()))


async def test_many_clients_and_a_stuck_one_do_not_block_writers() -> None:
    """Twenty following readers that do not read during a workload, one of them never (a
    tiny receive buffer): the batcher completes the workload while their streams are backed
    up; afterwards the readers get every event, or a SubscriberLagged line for each gap and
    the stream goes on."""
    async with endpoint(max_batch=2, event_buffer=64) as (batcher, server):
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stuck.connect((server.host, server.port))
        stuck.sendall(b"GET /events?since=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        readers = [await open_stream(server, "?since=1") for _ in range(19)]
        async with asyncio.timeout(20):
            await workload(batcher, n=5_000, keys=5_000)
        stats = batcher.stats()
        assert stats.committed == 5_000
        backed_up = [w for w in server._conns.values() if w.transport.get_write_buffer_size()]
        assert stuck_stream(server) in backed_up  # its stream waits to send; writers did not
        lags = 0
        assert_conserved(stats)
        last = last_event(batcher)
        for reader, _ in readers:
            got = await read_until(reader, last)
            indices = [e["index"] for e in got if "index" in e]
            assert indices[-1] == last
            lagged = [e for e in got if e["type"] == "SubscriberLagged"]
            assert len(indices) + sum(e["resume_from"] - e["missed"] for e in lagged) == last
            lags += len(lagged)
        assert lags > 0  # the readers fell behind (they read only now) and were told so
        assert server.connections == 20
        stuck.close()
        for _, writer in readers:
            writer.close()


async def test_too_many_clients_get_503() -> None:
    """Beyond ``max_clients`` open connections a client is answered 503."""
    async with wb.AsyncBatcher(MemorySink()) as batcher, await serve(batcher, max_clients=2) as s:
        streams = [await open_stream(s) for _ in range(2)]
        status, _, body = await raw(s, b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 503
        assert b"max_clients=2" in body
        for _, writer in streams:
            writer.close()


async def test_streams_of_clients_that_hung_up_free_their_slots() -> None:
    """Following clients that hang up on an idle batcher (no event to write) are noticed at
    once, so they do not hold ``max_clients`` slots and /stats answers again."""
    async with wb.AsyncBatcher(MemorySink()) as batcher, await serve(batcher, max_clients=2) as s:
        streams = [await open_stream(s) for _ in range(2)]
        for _, writer in streams:
            writer.close()
            await writer.wait_closed()
        async with asyncio.timeout(5):
            while s.connections:  # noqa: ASYNC110 - the server's own tasks end them
                await asyncio.sleep(0.01)
        status, _, _ = await raw(s, b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 200
        assert batcher.stats().accepted == 0  # no event came to reveal the hang-ups


async def test_close_leaves_no_tasks_or_sockets() -> None:
    """``close()`` ends open streams, stops listening, and leaves no task behind."""
    before = asyncio.all_tasks()
    async with endpoint() as (batcher, server):
        reader, writer = await open_stream(server)
        await workload(batcher, n=50)
        await server.close()
        assert server.closed
        assert server.connections == 0
        flusher = {t for t in asyncio.all_tasks() if t.get_name().startswith("writebehind-flush")}
        assert asyncio.all_tasks() - before - flusher == set()
        async with asyncio.timeout(5):
            await reader.read()  # the stream ended: EOF
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(server.host, server.port)
        await workload(batcher, n=50)  # the batcher is unaffected
        writer.close()


async def test_the_server_closes_with_the_batcher() -> None:
    """Closing the batcher closes the endpoint and its connections."""
    before = asyncio.all_tasks()
    batcher = wb.AsyncBatcher(MemorySink())
    await batcher.start()
    server = await serve(batcher)
    reader, writer = await open_stream(server)
    await batcher.close()
    async with asyncio.timeout(5):
        lines = (await reader.read()).splitlines()
        await server.wait_closed()
    assert json.loads(lines[-1])["type"] == "Closed"
    assert server.connections == 0
    assert asyncio.all_tasks() - before == set()
    writer.close()
    with pytest.raises(wb.WriteBehindError, match="closed"):
        await serve(batcher)


async def test_serve_checks_its_loop_and_state() -> None:
    """``serve()`` needs a started batcher on the running loop; the sync form refuses an
    unstarted one."""
    batcher = wb.AsyncBatcher(MemorySink())
    with pytest.raises(wb.WriteBehindError, match="not started"):
        await serve(batcher)
    with pytest.raises(wb.WriteBehindError, match="not started"):
        serve_sync(wb.Batcher(MemorySink()))


# -- writebehind top ----------------------------------------------------------------------
def test_top_once_plain_shows_the_counts(
    sync_endpoint: tuple[wb.Batcher, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``top --once --plain`` prints the name, state, counts, latency and notable events."""
    batcher, url = sync_endpoint
    for i in range(400):
        batcher.add({"id": i % 90})
    batcher.flush()
    s = batcher.stats()
    assert main(["top", "--once", "--plain", "--url", url, "--interval", "0.05"]) == 0
    out = capsys.readouterr().out
    assert f"sync-one (healthy) at {url}" in out
    assert f"accepted {s.accepted:,}  committed {s.committed:,}" in out
    assert f"dead-lettered {s.dead_lettered:,}" in out
    assert f"batches {s.batches:,}  retries {s.retried:,}" in out
    assert "write p50" in out
    assert "RecordsDeadLettered" in out
    assert "accepted/s 0.0" in out  # nothing was added between the two polls


def test_top_once_rich_and_by_port(
    sync_endpoint: tuple[wb.Batcher, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without ``--plain``, on a terminal, the same snapshot is a rich table; ``--port``
    finds 127.0.0.1."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    batcher, url = sync_endpoint
    for i in range(100):
        batcher.add({"id": i})
    batcher.flush()
    port = url.rsplit(":", 1)[1]
    assert main(["top", "--once", "--port", port, "--interval", "0.05"]) == 0
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().out)  # the terminal's codes
    assert f"accepted {batcher.stats().accepted:,}" in out
    assert "last notable events" in out
    assert "BatchFailed" in out


def test_top_unreachable_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """An endpoint nobody listens on: exit 1 and a message naming the URL, no traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["top", "--once", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot read the stats endpoint at http://127.0.0.1:{port}" in err
    assert "Traceback" not in err
    assert main(["top", "--once", "--url", "ftp://x"]) == 2
    assert main(["top", "--once"]) == 2


# -- several endpoints ----------------------------------------------------------------------
def test_top_sums_several_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    """``top URL1 --url URL2`` shows the sum of two batchers (one per "worker") and one line
    for each, in plain text and in the rich view."""
    with (
        wb.Batcher(MemorySink(), key="id", linger=0.01, name="w1") as b1,
        wb.Batcher(MemorySink(), key="id", linger=0.01, name="w2") as b2,
        serve_sync(b1) as s1,
        serve_sync(b2) as s2,
    ):
        for i in range(30):
            b1.add({"id": i})
        for i in range(45):
            b2.add({"id": i})
        b1.flush()
        b2.flush()
        args = ["top", "--once", "--interval", "0.05", s1.url, "--url", s2.url]
        assert main([*args, "--plain"]) == 0
        out = capsys.readouterr().out
        assert "2 batchers (healthy), sum of 2 of 2 endpoints up" in out
        assert "accepted 75  committed 75" in out
        assert "pending    [....................] 0 / 5,000" in out  # 2 x 2,500
        assert f"[1] {s1.url}  healthy  w1  accepted 30  committed 30" in out
        assert f"[2] {s2.url}  healthy  w2  accepted 45  committed 45" in out
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "endpoints" in out
        assert "accepted 75" in out


def test_top_all_endpoints_down_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """When no endpoint answers, each is named with its reason and the exit code is 1."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    assert (
        main(
            [
                "top",
                "--once",
                "--interval",
                "0.01",
                "--port",
                str(ports[0]),
                "--port",
                str(ports[1]),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    for port in ports:
        assert f"cannot read the stats endpoint at http://127.0.0.1:{port}: Connection" in err


def test_sum_docs_adds_counters_and_keeps_what_agrees() -> None:
    """Integers add up (also inside mappings), booleans are all-of, other values are kept
    when they agree and "mixed" otherwise."""
    a = {"accepted": 3, "closed": False, "sink_state": "healthy", "dropped_by_reason": {"x": 1}}
    b = {"accepted": 4, "closed": True, "sink_state": "failing", "dropped_by_reason": {"y": 2}}
    assert sum_docs([a, b]) == {
        "accepted": 7,
        "closed": False,
        "sink_state": "mixed",
        "dropped_by_reason": {"x": 1, "y": 2},
    }
    assert sum_docs([a]) == a


class FakeClient(Client):
    """A client that answers from a list of documents and event lists."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        super().__init__("http://127.0.0.1:1")
        self.docs = docs
        self.asked: list[int] = []

    def stats(self) -> dict[str, Any]:
        if not self.docs:
            raise Unreachable("ConnectionRefusedError: gone")
        self.last = self.docs.pop(0)
        return self.last

    def events(self, since: int) -> list[dict[str, Any]]:
        """The last event held (index ``next - 1``)."""
        self.asked.append(since)
        index = self.last["events"]["next"] - 1
        return [{"type": "BatchCommitted", "index": index, "duration": 0.001, "size": 1}]


def doc(accepted: int, nxt: int) -> dict[str, Any]:
    return {
        "schema": 1,
        "state": "healthy",
        "stats": {"accepted": accepted, "committed": 0},
        "events": {"oldest": 1, "next": nxt},
    }


def state_doc(state: str) -> dict[str, Any]:
    """A real ``/stats`` document (of a batcher never started) claiming ``state``."""
    doc = _wire.snapshot(wb.AsyncBatcher(MemorySink(), name="w"))
    doc["stats"].update(accepted=1, committed=1)
    return {**doc, "state": state}


@pytest.mark.parametrize(
    ("states", "summed"),
    [
        (["healthy", "throttled", "failing"], "failing"),
        (["healthy", "throttled", "closed"], "throttled"),
        (["healthy", "not started"], "healthy"),
        (["not started", "closed"], "not started"),
        (["closed", "closed"], "closed"),
    ],
)
def test_the_summed_state_is_the_worst(states: list[str], summed: str) -> None:
    """Several endpoints: top shows the worst state of the live ones (failing, throttled,
    healthy, not started), closed only if every one is, and each endpoint's own word."""
    fleet = Fleet([f"http://127.0.0.1:{n}" for n in range(1, len(states) + 1)])
    for e, st in zip(fleet.endpoints, states, strict=True):
        e.client = FakeClient([state_doc(st)])
    fleet.poll()
    totals = fleet.totals()
    assert totals is not None
    assert totals.state == summed
    view = TopView(fleet)
    assert [st for _, st, _ in view.endpoint_lines()] == states
    width = max(map(len, states))
    lines = view.lines()
    listed = lines[lines.index("  endpoints:") + 1 :][: len(states)]
    for line, st in zip(listed, states, strict=True):
        assert f"  {st:<{width}}  w  accepted 1" in line  # the summaries line up


def test_an_endpoint_restarted_or_gone() -> None:
    """An endpoint whose counters went down (its process restarted) has no rate and reads its
    events from the new process's start; one that stops answering is down, with why."""
    client = FakeClient([doc(10, 50), doc(20, 60), doc(5, 3)])
    endpoint = Endpoint(client)
    endpoint.poll()
    endpoint.poll()
    assert endpoint.rates() is not None
    endpoint.poll()
    assert endpoint.rates() is None
    assert client.asked == [1, 50, 1]  # after the restart, from the new process's first event
    assert len(endpoint.commits) == 3
    endpoint.poll()
    assert not endpoint.up
    assert endpoint.error == "ConnectionRefusedError: gone"
