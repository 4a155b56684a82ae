"""The stats endpoint as a WSGI app (``writebehind.integrations.wsgi``) with the thread-backed
``Batcher``, under the stdlib's ``wsgiref`` server in a thread and under gunicorn."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

import writebehind as wb
from writebehind.integrations.serve import serve_sync
from writebehind.integrations.wsgi import mount, wsgi_app
from writebehind.testing import FlakySink, MemorySink

ROOT = Path(__file__).resolve().parent.parent


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def wsgiref_serving(app: Any) -> Iterator[str]:
    """``app`` under ``wsgiref`` (a thread per request) at the yielded base URL."""
    server = make_server(
        "127.0.0.1", 0, app, server_class=ThreadingServer, handler_class=QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def request(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of ``method url``."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request(method, "/" + rest)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def other_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The application the stats app is mounted beside."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the application: " + environ["PATH_INFO"].encode()]


@pytest.fixture
def batcher() -> Iterator[wb.Batcher]:
    sink = FlakySink(fail_first=1, poison=lambda r: r["id"] == 7)
    with wb.Batcher(sink, key="id", max_batch=20, linger=0.01, name="sync-one") as b:
        yield b


def test_answers_equal_the_standalone_server(batcher: wb.Batcher) -> None:
    """Mounted at /writebehind beside another app, /stats, /health and /events?follow=0 are
    the standalone server's answers for the same batcher, refused requests too."""
    for i in range(300):
        batcher.add({"id": i % 50})
    batcher.flush()
    app = mount(other_app, "/writebehind", wsgi_app(batcher))
    with serve_sync(batcher) as standalone, wsgiref_serving(app) as base:
        assert request(base + "/elsewhere")[2] == b"the application: /elsewhere"
        for path in ("/stats", "/health", "/events?since=1&follow=0", "/events?since=9&follow=0"):
            status, headers, body = request(base + "/writebehind" + path)
            want_status, want_headers, want = request(standalone.url + path)
            assert status == want_status
            assert headers["content-type"] == want_headers["content-type"]
            assert headers["cache-control"] == "no-store"
            if path == "/stats":
                got, expected = json.loads(body), json.loads(want)
                got.pop("at")
                expected.pop("at")
                assert got == expected
                assert got["stats"]["dead_lettered"] >= 1
            else:
                assert body == want, path
        for method, path in [("GET", "/nowhere"), ("GET", "/events?since=x"), ("POST", "/stats")]:
            got = request(base + "/writebehind" + path, method)
            want = request(standalone.url + path, method)
            assert (got[0], got[2]) == (want[0], want[2])


def read_lines(url: str, out: list[dict[str, Any]]) -> None:
    """Read a streamed /events response line by line into ``out`` until it ends."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("GET", "/" + rest)
    response = conn.getresponse()
    assert response.status == 200
    while line := response.readline():
        out.append(json.loads(line))
    conn.close()


def test_a_bounded_follow_streams_new_events_and_ends() -> None:
    """``follow=1`` streams events as they are published from another thread and ends after
    ``follow_for``; with a longer one, it ends after the ``Closed`` event instead."""
    with wb.Batcher(MemorySink(), key="id", max_batch=10, linger=0.01) as b:
        with wsgiref_serving(wsgi_app(b, follow_for=1.0)) as base:
            got: list[dict[str, Any]] = []
            reader = threading.Thread(target=read_lines, args=(base + "/events?since=1", got))
            started = time.monotonic()
            reader.start()
            for i in range(100):
                b.add({"id": i})
            b.flush()
            reader.join(10)
            took = time.monotonic() - started
            assert 1.0 <= took < 5
            assert sum(e["size"] for e in got if e["type"] == "BatchCommitted") == 100
            assert [e["index"] for e in got] == list(range(1, len(got) + 1))
        b2 = wb.Batcher(MemorySink(), key="id", max_batch=10, linger=0.01)
        b2.start()
        with wsgiref_serving(wsgi_app(b2, follow_for=60)) as base:
            got = []
            reader = threading.Thread(target=read_lines, args=(base + "/events?since=1", got))
            reader.start()
            for i in range(30):
                b2.add({"id": i})
            time.sleep(0.2)
            started = time.monotonic()
            b2.close()
            reader.join(10)
            assert not reader.is_alive()
            assert time.monotonic() - started < 5
            assert got[-1]["type"] == "Closed"
            assert got[-1]["report"]["stats"]["accepted"] == 30


def test_no_batcher_yet_not_started_closed_and_bad_arguments() -> None:
    """A function that returns None is answered 503; so is /health of a batcher not started
    or closed, with its status (which /stats names as its state); ``follow_for=0`` makes
    follow=1 a snapshot; bad arguments are ``ConfigError``."""
    current: dict[str, wb.Batcher] = {}
    b = wb.Batcher(MemorySink(), key="id")
    app = wsgi_app(lambda: current.get("b"), follow_for=0)
    with wsgiref_serving(app) as base:
        status, _, body = request(base + "/health")
        assert status == 503
        assert b"no batcher yet" in body
        current["b"] = b
        status, _, body = request(base + "/health")
        assert (status, json.loads(body)["status"]) == (503, "not started")
        assert json.loads(request(base + "/stats")[2])["state"] == "not started"
        assert request(base + "/events")[0] == 503
        b.start()
        b.add({"id": 1})
        b.flush()
        assert request(base + "/health")[0] == 200
        assert json.loads(request(base + "/stats")[2])["state"] == "healthy"
        status, headers, body = request(base + "/events?since=1")  # follow=1, follow_for=0
        assert (status, headers["content-length"]) == (200, str(len(body)))
        assert json.loads(body.splitlines()[-1])["type"] == "BatchCommitted"
        b.close()
        status, _, body = request(base + "/health")
        assert (status, json.loads(body)["status"]) == (503, "closed")
        status, _, body = request(base + "/events?since=1&follow=0")  # its loop has stopped
        assert json.loads(body.splitlines()[-1])["type"] == "Closed"
        assert json.loads(request(base + "/stats")[2])["state"] == "closed"
    with pytest.raises(wb.ConfigError, match="wsgi_app"):
        wsgi_app("not a batcher")  # type: ignore[arg-type]
    with pytest.raises(wb.ConfigError, match="follow_for"):
        wsgi_app(b, follow_for=-1)
    with pytest.raises(wb.ConfigError, match="prefix"):
        mount(other_app, "writebehind/", app)


def test_the_flask_example_mounts_it() -> None:
    """The example's Flask app (werkzeug's DispatcherMiddleware) serves heartbeats and the
    batcher's stats under /writebehind."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import stats_wsgi
    finally:
        sys.path.remove(str(ROOT / "examples"))
    with (
        wb.Batcher(MemorySink(), key="id", linger=0.01, name="flask") as b,
        wsgiref_serving(stats_wsgi.create_app(b)) as base,
    ):
        for i in range(5):
            assert request(f"{base}/heartbeat/{i}", "POST")[0] == 200
        b.flush()
        doc = json.loads(request(base + "/writebehind/stats")[2])
    assert (doc["batcher"], doc["stats"]["committed"]) == ("flask", 5)


def test_two_gunicorn_gthread_workers_serve_it_on_one_port() -> None:
    """``gunicorn -k gthread --workers 2`` with the example's factory: both workers (each its
    own batcher) answer /writebehind/stats on the one port; SIGTERM stops the master."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "gunicorn", "--chdir", str(ROOT / "examples")]
    command += ["-k", "gthread", "--workers", "2", "--threads", "4", "--log-level", "warning"]
    command += ["--bind", f"fd://{sock.fileno()}", "stats_wsgi:create_app()"]
    proc = subprocess.Popen(command, pass_fds=[sock.fileno()], env=env)
    names: set[str] = set()
    try:
        deadline = time.monotonic() + 30
        while len(names) < 2:
            assert time.monotonic() < deadline, names
            try:
                status, _, body = request(base + "/writebehind/stats")
            except OSError:
                time.sleep(0.05)
                continue
            if status == 200:
                names.add(json.loads(body)["batcher"])
        for i in range(10):
            assert request(f"{base}/heartbeat/{i}", "POST")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        sock.close()
    assert len(names) == 2
