"""The stats endpoint as an ASGI app (``writebehind.integrations.asgi``) under a real uvicorn,
and ``writebehind top`` summing several worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

import writebehind as wb
from writebehind.cli.main import main
from writebehind.integrations._apps import sub_path
from writebehind.integrations.asgi import StatsASGIApp, asgi_app
from writebehind.integrations.asgi import mount as asgi_mount
from writebehind.integrations.serve import serve
from writebehind.testing import FlakySink, MemorySink

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def listening_socket(sndbuf: int | None = None) -> socket.socket:
    """A socket on a free port of 127.0.0.1 (accepted connections inherit ``sndbuf``)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any, sndbuf: int | None = None) -> AsyncIterator[str]:
    """``app`` under uvicorn on this loop, at the yielded ``http://127.0.0.1:PORT``."""
    sock = listening_socket(sndbuf)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        sock.close()


def request(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of ``method url`` (blocking)."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request(method, "/" + rest)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def aget(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(request, url, method)


class Stream:
    """A following ``/events`` response read as it comes (HTTP/1.1 chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.buffer, self.ended = reader, writer, b"", False

    @classmethod
    async def open(cls, base: str, query: str, rcvbuf: int | None = None) -> Stream:
        host, _, rest = base.removeprefix("http://").partition("/")
        name, _, port = host.partition(":")
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect((name, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        path = f"/{rest}/events{query}".replace("//", "/")
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"application/x-ndjson" in head
        return cls(reader, writer)

    async def _chunk(self) -> None:
        size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
        data = await self.reader.readexactly(size + 2)
        self.buffer += data[:-2]
        self.ended = size == 0

    async def lines(self, until: int | None = None, timeout: float = 10) -> list[dict[str, Any]]:
        """Event lines until the one with index ``until``, or until the response ends."""
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while not (until is not None and got and got[-1].get("index") == until):
                line, sep, rest = self.buffer.partition(b"\n")
                if sep:
                    self.buffer = rest
                    got.append(json.loads(line))
                elif self.ended:
                    break
                else:
                    await self._chunk()
        return got

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def last_event(batcher: wb.AsyncBatcher) -> int:
    return batcher.events(since=None).started_at - 1


async def workload(batcher: wb.AsyncBatcher, n: int = 300, keys: int = 80) -> None:
    for i in range(n):
        await batcher.add({"id": i % keys, "n": i})
    await batcher.flush()


def mounted(app: StatsASGIApp) -> Starlette:
    return Starlette(routes=[Mount("/writebehind", app=app)])


async def until(condition: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polled state of the server
            await asyncio.sleep(0.02)


# -- the same answers as the standalone server ----------------------------------------------
async def test_stats_health_and_events_equal_the_standalone_server() -> None:
    """Mounted in Starlette at /writebehind, /stats, /health and /events?follow=0 answer the
    standalone server's JSON for the same batcher (only /stats' "at" time differs)."""
    sink = FlakySink(fail_first=1, poison=lambda r: r["n"] == 7)
    async with (
        wb.AsyncBatcher(sink, key="id", max_batch=10, linger=0.01, name="agents") as b,
        await serve(b) as standalone,
        uvicorn_serving(mounted(asgi_app(b))) as base,
    ):
        await workload(b)
        mine = base + "/writebehind"
        for path in ("/stats", "/health", "/events?since=1&follow=0", "/events?since=5&follow=0"):
            status, headers, body = await aget(mine + path)
            want_status, want_headers, want = await aget(standalone.url + path)
            assert (status, headers["content-type"]) == (want_status, want_headers["content-type"])
            assert headers["cache-control"] == "no-store"
            if path == "/stats":
                got, expected = json.loads(body), json.loads(want)
                assert got.pop("at") >= expected.pop("at") - 5
                assert got == expected
                assert got["stats"]["accepted"] == 300
                assert got["stats"]["dead_lettered"] == 1
            else:
                assert body == want, path
        events = [json.loads(x) for x in (await aget(mine + "/events?since=1&follow=0"))[2].split()]
        assert [e["index"] for e in events] == list(range(1, last_event(b) + 1))


async def test_refused_requests_equal_the_standalone_server() -> None:
    """Unknown routes (404), bad parameters (400) and other methods (405 with Allow) get the
    standalone server's status and one-line body."""
    async with (
        wb.AsyncBatcher(MemorySink()) as b,
        await serve(b) as standalone,
        uvicorn_serving(mounted(asgi_app(b))) as base,
    ):
        cases = [
            ("GET", "/nowhere"),
            ("GET", "/stats?verbose=1"),
            ("GET", "/events?since=-1"),
            ("GET", "/events?since=x&follow=0"),
            ("GET", "/events?follow=2"),
            ("GET", "/events?since=1&since=2"),
            ("POST", "/stats"),
            ("DELETE", "/events"),
        ]
        for method, path in cases:
            got = await aget(base + "/writebehind" + path, method)
            want = await aget(standalone.url + path, method)
            assert (got[0], got[2]) == (want[0], want[2]), (method, path)
            assert got[0] in (400, 404, 405)
            if got[0] == 405:
                assert got[1]["allow"] == "GET"


# -- /events ---------------------------------------------------------------------------------
async def test_a_following_stream_gets_every_event_and_ends_after_closed() -> None:
    """A following reader gets every event in order with no gaps, and the response ends
    (terminating chunk) after the Closed event, whose report is nested."""
    b = wb.AsyncBatcher(MemorySink(), key="id", max_batch=10, linger=0.01)
    await b.start()
    app = asgi_app(b, follow_for=None)
    async with uvicorn_serving(mounted(app)) as base:
        stream = await Stream.open(base + "/writebehind", "?since=1")
        await workload(b)
        last = last_event(b)
        got = await stream.lines(until=last)
        assert [e["index"] for e in got] == list(range(1, last + 1))
        assert sum(e["size"] for e in got if e["type"] == "BatchCommitted") == 300
        await b.close()
        rest = await stream.lines()
        assert stream.ended
        assert [e["type"] for e in rest] == ["Closed"]
        assert rest[0]["report"]["stats"]["accepted"] == 300
        assert app.streams == 0
        await stream.close()


async def test_streams_end_when_the_client_hangs_up_or_follow_for_runs_out() -> None:
    """Following clients that hang up on an idle batcher free their slot at once; a stream
    with nothing to send ends after ``follow_for``; ``max_streams`` bounds open streams."""
    async with wb.AsyncBatcher(MemorySink()) as b:
        app = asgi_app(b, follow_for=None, max_streams=3)
        async with uvicorn_serving(mounted(app)) as base:
            streams = [await Stream.open(base + "/writebehind", "") for _ in range(3)]
            await until(lambda: app.streams == 3)
            status, _, body = await aget(base + "/writebehind/events")
            assert status == 503
            assert b"max_streams=3" in body
            for stream in streams:
                await stream.close()
            await until(lambda: app.streams == 0)
        bounded = asgi_app(b, follow_for=0.3)
        async with uvicorn_serving(bounded) as base:
            stream = await Stream.open(base, "?since=1")
            started = time.monotonic()
            assert await stream.lines() == []
            assert stream.ended
            assert time.monotonic() - started < 3
            await stream.close()


async def test_a_stalled_reader_is_dropped_and_never_slows_the_writers() -> None:
    """A following client that never reads (tiny buffers both sides) while 20,000 events are
    published: the batcher finishes at full pace, and the app drops that stream within
    ``stall_timeout``; a client that reads meanwhile is told of the events it missed."""
    async with wb.AsyncBatcher(
        MemorySink(), key="id", max_batch=1, max_pending=50, linger=0, event_buffer=64
    ) as b:
        app = asgi_app(b, stall_timeout=0.5, follow_for=None)
        async with uvicorn_serving(app, sndbuf=4096) as base:
            stuck = await Stream.open(base, "?since=1", rcvbuf=1024)
            reading = await Stream.open(base, "?since=1")
            read_all = asyncio.create_task(reading.lines(timeout=60))
            started = time.monotonic()
            await workload(b, n=20_000, keys=20_000)
            assert b.stats().committed == 20_000
            assert time.monotonic() - started < 30
            await until(lambda: app.streams == 1)  # the stuck one was dropped
            await stuck.close()
            await b.close()  # the reading stream ends after Closed
            got = await read_all
            lagged = [e for e in got if e["type"] == "SubscriberLagged"]
            seen = [e["index"] for e in got if "index" in e]
            assert got[-1]["type"] == "Closed"
            assert len(seen) + sum(e["resume_from"] - e["missed"] for e in lagged) == seen[-1]
            await reading.close()
            await until(lambda: app.streams == 0)


async def test_a_thread_backed_batcher_served_from_the_servers_loop() -> None:
    """A sync ``Batcher`` (its own loop thread) served from uvicorn's loop: /stats and a
    following /events stream work across the threads, and the stream ends after Closed."""
    batcher = wb.Batcher(MemorySink(), key="id", max_batch=10, linger=0.01, name="sync-one")
    batcher.start()
    app = asgi_app(batcher, follow_for=None)
    async with uvicorn_serving(app) as base:
        stream = await Stream.open(base, "?since=1")
        await asyncio.to_thread(lambda: [batcher.add({"id": i}) for i in range(100)])
        await asyncio.to_thread(batcher.flush)
        status, _, body = await aget(base + "/stats")
        assert status == 200
        assert json.loads(body)["stats"]["committed"] == 100
        assert json.loads(body)["state"] == "healthy"
        await asyncio.to_thread(batcher.close)
        got = await stream.lines()
        assert got[-1]["type"] == "Closed"
        assert stream.ended
        assert [e["index"] for e in got] == list(range(1, got[-1]["index"] + 1))
        status, _, body = await aget(base + "/health")
        assert (status, json.loads(body)["status"]) == (503, "closed")
        assert json.loads((await aget(base + "/stats"))[2])["state"] == "closed"
        await stream.close()


# -- the ASGI protocol ---------------------------------------------------------------------
async def test_lifespan_websocket_root_path_and_a_batcher_function() -> None:
    """Lifespan messages are acknowledged; a websocket is refused; the route is found below
    ``root_path`` whether or not ``path`` includes it; a function source that returns None
    is answered 503 until it returns a batcher."""
    current: dict[str, wb.AsyncBatcher] = {}
    app = asgi_app(lambda: current.get("b"))
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    inbox = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> Any:
        return next(inbox)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    sent.clear()
    inbox = iter([{"type": "websocket.connect"}])
    await app({"type": "websocket", "path": "/"}, receive, send)
    assert sent[0]["type"] == "websocket.close"

    async def status_of(path: str, root: str) -> int:
        sent.clear()
        scope = {"type": "http", "method": "GET", "path": path, "root_path": root}
        await app(scope, receive, send)
        return int(sent[0]["status"])

    assert await status_of("/wb/health", "/wb") == 503  # no batcher yet
    async with wb.AsyncBatcher(MemorySink()) as b:
        current["b"] = b
        assert await status_of("/wb/health", "/wb") == 200
        assert await status_of("/health", "/wb") == 200
        assert await status_of("/wbx/health", "/wb") == 404
    assert (sub_path("/wb", "/wb"), sub_path("/wb/stats", "/wb")) == ("/", "/stats")
    with pytest.raises(wb.ConfigError, match="asgi_app"):
        asgi_app(object())  # type: ignore[arg-type]
    with pytest.raises(wb.ConfigError, match="max_streams"):
        asgi_app(b, max_streams=0)


# -- several worker processes ----------------------------------------------------------------
def start_uvicorn(sock: socket.socket, *more: str) -> subprocess.Popen[bytes]:
    """``uvicorn stats_asgi:app`` (the example) on the inherited socket ``sock``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "stats_asgi:app"]
    command += ["--fd", str(sock.fileno()), "--log-level", "warning", *more]
    return subprocess.Popen(command, pass_fds=[sock.fileno()], env=env)


@contextlib.contextmanager
def uvicorn_processes(count: int, *more: str) -> Iterator[list[str]]:
    """``count`` uvicorn processes, each on its own port; yields their base URLs."""
    socks = [listening_socket() for _ in range(count)]
    procs = [start_uvicorn(sock, *more) for sock in socks]
    try:
        yield [f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for proc in procs:
            proc.terminate()
        for proc, sock in zip(procs, socks, strict=True):
            # uvicorn re-raises SIGTERM once it has shut down gracefully
            assert proc.wait(20) in (0, -signal.SIGTERM)
            sock.close()


def wait_up(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _, body = request(url + "/writebehind/stats")
            if status == 200:
                doc: dict[str, Any] = json.loads(body)
                return doc
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.05)


def test_two_workers_serve_the_app_on_one_port() -> None:
    """``uvicorn --workers 2`` with the example app: both workers serve /writebehind on the
    one port (no "address already in use"), each its own batcher."""
    with uvicorn_processes(1, "--workers", "2") as (url,):
        names: set[str] = set()
        deadline = time.monotonic() + 30
        while len(names) < 2:
            names.add(wait_up(url)["batcher"])
            assert time.monotonic() < deadline, names
        for i in range(20):
            assert request(f"{url}/heartbeat/{i}", "POST")[0] == 200
    assert len(names) == 2
    assert all(n.startswith("heartbeats-") for n in names)


def test_top_sums_two_worker_processes_and_shows_a_down_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two uvicorn processes (one batcher each) and a third URL nobody listens on:
    ``top --once --plain`` shows the sum (accepted 7 + 12 = 19), one line per endpoint, and
    the third as down; exit 0."""
    with uvicorn_processes(2) as urls, socket.socket() as nobody:
        nobody.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{nobody.getsockname()[1]}/writebehind"
        for url, count in zip(urls, (7, 12), strict=True):
            wait_up(url)
            for i in range(count):
                assert request(f"{url}/heartbeat/{i}", "POST")[0] == 200
        mounted_urls = [u + "/writebehind" for u in urls]
        accepted = [wait_up(u)["stats"]["accepted"] for u in urls]
        assert accepted == [7, 12]
        code = main(["top", "--once", "--plain", "--interval", "0.05", *mounted_urls, down])
        out = capsys.readouterr().out
    assert code == 0, out
    assert "sum of 2 of 3 endpoints up" in out
    assert "accepted 19  committed" in out
    assert f"[1] {mounted_urls[0]}  healthy  heartbeats-" in out
    assert "accepted 7  committed" in out
    assert "accepted 12  committed" in out
    assert f"[3] {down}  down     ConnectionRefusedError" in out  # padded as "healthy"


async def test_mount_sends_the_prefix_to_the_stats_app_and_the_rest_to_the_app() -> None:
    """``mount(app, "/writebehind", stats)`` (for Django's asgi.py): requests under the
    prefix reach the stats app, others and the lifespan reach the application."""
    seen: list[str] = []

    async def application(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"{scope['type']} {scope.get('path', '')}")
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async with wb.AsyncBatcher(MemorySink(), name="mounted") as b:
        both = asgi_mount(application, "/writebehind", asgi_app(b))
        async with uvicorn_serving(both) as base:
            status, _, body = await aget(base + "/writebehind/stats")
            assert status == 200
            assert json.loads(body)["batcher"] == "mounted"
            assert (await aget(base + "/writebehind/nope"))[0] == 404
            assert (await aget(base + "/writebehindx/stats"))[0] == 204
            assert (await aget(base + "/other"))[0] == 204
    assert seen == ["lifespan ", "http /writebehindx/stats", "http /other"]
    with pytest.raises(wb.ConfigError, match="prefix"):
        asgi_mount(application, "/writebehind/", asgi_app(b))
