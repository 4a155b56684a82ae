"""The stream hand-off across processes (issue 16), against the real Redis and PostgreSQL:
3 producer processes and 3 flusher processes, 100,000 ids, one flusher SIGKILLed mid-batch;
and a Redis killed and restarted mid-run. Never skipped: a missing server fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.pg import DSN
from tests.redis_server import SHARED_URL, free_port, shared_redis

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, str(ROOT / "tests" / "stream_worker.py")]


def pg() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {DSN} and is not reachable: {exc!r}")


def fetch(sql: str) -> tuple[object, ...]:
    with pg() as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return row


@contextlib.contextmanager
def table() -> Iterator[str]:
    name = f"stream_{uuid.uuid4().hex[:12]}"
    with pg() as conn:
        conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v int, note text)".encode())
    try:
        yield name
    finally:
        with pg() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}".encode())


class Procs:
    """The test's worker processes, killed at the end whatever happens."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: object) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"worker-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen([*WORKER, *map(str, args)], stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def flusher(
        self, url: str, stream: str, tab: str, f: int, claim_after: float, *stall: object
    ) -> subprocess.Popen[bytes]:
        out = self.tmp / f"flusher-{f}.json"
        return self.start(
            "flush", out, url, stream, "flushers", f"host-{f}", DSN, tab, claim_after, *stall
        )

    def producer(
        self, url: str, stream: str, p: int, first: int, last: int
    ) -> subprocess.Popen[bytes]:
        return self.start("produce", self.tmp / f"producer-{p}.json", url, stream, first, last)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.tmp.glob("worker-*.log")))

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def wait_for(what: str, check: object, timeout: float, procs: Procs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}\n{procs.logs()}")


def wait_ok(proc: subprocess.Popen[bytes], procs: Procs, timeout: float = 60) -> None:
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a worker did not exit within {timeout} s\n{procs.logs()}")
    assert code == 0, procs.logs()


def settled(client: redis.Redis, stream: str, tab: str, n: int) -> bool:
    (rows,) = fetch(f"SELECT count(*) FROM {tab}")
    if rows != n:
        return False
    pending = client.xpending(stream, "flushers")
    return bool(pending["pending"] == 0 and client.xlen(stream) == 0)


def test_three_producers_three_flushers_one_killed_mid_batch(tmp_path: Path) -> None:
    """100,000 unique ids from 3 producer processes through one stream, 3 flusher processes
    into one table; one flusher hangs in its 4th write (records read, batch in flight, not
    committed) and is SIGKILLed there. The other two claim its entries after claim_after
    (1 s): every id is in the table exactly once, and no entry is pending at the end."""
    client = shared_redis()
    stream = f"wb-test-{uuid.uuid4().hex[:10]}"
    n, procs = 100_000, Procs(tmp_path)
    stalled = tmp_path / "stalled"
    try:
        with table() as tab:
            flushers = [
                procs.flusher(SHARED_URL, stream, tab, f, 1.0, *((3, stalled) if f == 0 else ()))
                for f in range(3)
            ]
            producers = [
                procs.producer(SHARED_URL, stream, p, p * n // 3, (p + 1) * n // 3)
                for p in range(3)
            ]
            wait_for("the victim to stall mid-batch", stalled.exists, 60, procs)
            flushers[0].send_signal(signal.SIGKILL)
            flushers[0].wait(10)
            for proc in producers:
                wait_ok(proc, procs)
            committed = [
                i
                for p in range(3)
                for i in json.loads((tmp_path / f"producer-{p}.json").read_text())["committed"]
            ]
            assert sorted(committed) == list(range(n))
            wait_for(
                "every id in the table and nothing pending",
                lambda: settled(client, stream, tab, n),
                60,
                procs,
            )
            for proc in flushers[1:]:
                proc.send_signal(signal.SIGTERM)
            for proc in flushers[1:]:
                wait_ok(proc, procs)
            rows, distinct, low, high = fetch(
                f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {tab}"
            )
            assert (rows, distinct, low, high) == (n, n, 0, n - 1)
            reports = [json.loads((tmp_path / f"flusher-{f}.json").read_text()) for f in (1, 2)]
            assert sum(r["claimed"] for r in reports) > 0, reports  # the victim's entries
            assert all(r["left_pending"] == 0 for r in reports), reports
            assert client.xpending(stream, "flushers")["pending"] == 0
            # the victim held entries: stalled batch (3 writes done) of up to 500 records
            assert int(stalled.read_text()) > 0
    finally:
        procs.kill_all()
        client.delete(stream)


class DurableRedis:
    """A private redis-server that keeps its data across SIGKILL: append-only file,
    fsynced at every write (the tests/redis_server.py one keeps nothing)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            pytest.fail("redis-server is required (apt-get install redis-server)")
        self.binary, self.dir = binary, directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.dir),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    client.close()
                    return
            time.sleep(0.02)
        pytest.fail("the private redis-server did not answer")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def test_redis_killed_and_restarted_mid_run(tmp_path: Path) -> None:
    """Redis (append-only, fsync always) SIGKILLed while 2 producers and 2 flushers run,
    and restarted 1.5 s later on the same port: the producers' writes fail and are retried
    (their buffers fill and add() blocks, the when_full policy), everyone reconnects, and
    every id a producer saw committed is in the table; nothing is left pending."""
    server = DurableRedis(tmp_path)
    server.start()
    n, procs = 30_000, Procs(tmp_path)
    stream = "hb"
    try:
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        with table() as tab:
            flushers = [procs.flusher(server.url, stream, tab, f, 2.0) for f in range(2)]
            producers = [
                procs.producer(server.url, stream, p, p * n // 2, (p + 1) * n // 2)
                for p in range(2)
            ]
            wait_for(
                "some rows",
                lambda: fetch(f"SELECT count(*) FROM {tab}")[0] > 2_000,  # type: ignore[operator]
                60,
                procs,
            )
            (before,) = fetch(f"SELECT count(*) FROM {tab}")
            server.kill()
            time.sleep(1.5)
            server.start()
            for proc in producers:
                wait_ok(proc, procs, timeout=90)
            outputs = [json.loads((tmp_path / f"producer-{p}.json").read_text()) for p in (0, 1)]
            committed = {i for out in outputs for i in out["committed"]}
            assert sum(out["retried"] for out in outputs) > 0, outputs  # they saw the outage
            wait_for(
                "every committed id in the table",
                lambda: settled(client, stream, tab, len(committed)),
                60,
                procs,
            )
            for proc in flushers:
                proc.send_signal(signal.SIGTERM)
            for proc in flushers:
                wait_ok(proc, procs)
            with pg() as conn:
                ids = {r[0] for r in conn.execute(f"SELECT id FROM {tab}".encode())}
            assert committed <= ids, len(committed - ids)
            assert len(committed) == n  # the retry policy outlived the outage: all committed
            assert isinstance(before, int)
            assert before < n
    finally:
        procs.kill_all()
        server.kill()


def test_demo_hosts_runs_and_drains(tmp_path: Path) -> None:
    """``writebehind demo --hosts 2 --flushers 2``: rates and lag printed each second, the
    stream drained, nothing lost or left pending (exit status 0)."""
    shared_redis().close()
    table_name = f"hosts_{uuid.uuid4().hex[:10]}"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "writebehind.cli", "demo", "--hosts", "2", "--flushers", "2",
             "--dsn", DSN, "--redis", SHARED_URL, "--duration", "2", "--agents", "2000",
             "--table", table_name],
            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "lost: 0" in done.stdout, done.stdout
        assert "0 entries, 0 pending" in done.stdout, done.stdout
        assert "-> flushers" in done.stdout
        (rows,) = fetch(f"SELECT count(*) FROM {table_name}")
        assert rows == 2000
    finally:
        with pg() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table_name}".encode())
