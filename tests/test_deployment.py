"""The deployment recipes (issue 10, docs/deployment.md): each ``examples/deploy_*.py`` run
by the real server it is written for (uvicorn, gunicorn, a Celery worker, Django,
``multiprocessing``), stopped the way that server is stopped in production, with every
record a client was told about counted in PostgreSQL: present, and exactly once."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pg import DSN

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
REDIS = "redis://127.0.0.1:6379/11"  # the Celery broker and result store of these tests

pytestmark = pytest.mark.server


# -- PostgreSQL: a keyless table per test (an append: a record written twice is two rows) --
def pg() -> psycopg.Connection[tuple[Any, ...]]:
    try:
        return psycopg.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {DSN} and is not reachable: {exc!r}")


@pytest.fixture
def table() -> Iterator[str]:
    name = f"deploy_{uuid.uuid4().hex[:12]}"
    with pg() as conn:
        conn.execute(f"CREATE TABLE {name} (request_id text NOT NULL, pid integer NOT NULL)")
    yield name
    with pg() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def written(table: str) -> tuple[Counter[str], set[int]]:
    """How many rows each request id has, and the pids that wrote them."""
    with pg() as conn:
        rows = conn.execute(f"SELECT request_id, pid FROM {table}").fetchall()
    return Counter(r for r, _ in rows), {p for _, p in rows}


def assert_answered_200(load: Load) -> None:
    """Every request that got an HTTP answer got 200 (the others met a closing server)."""
    assert {s for s in load.answers.copy().values() if isinstance(s, int)} == {200}, load.summary


def assert_exactly_once(rows: Counter[str], answered: set[str], sent: set[str]) -> None:
    """Every answered record is there once; nothing is there twice or from nowhere."""
    assert not {r: n for r, n in rows.items() if n > 1}, "written twice"
    assert not answered - set(rows), f"{len(answered - set(rows))} answered record(s) missing"
    assert not set(rows) - sent, "rows that nobody sent"


# -- processes: each test's servers in a session of their own, killed at the end ----------
@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Path]:
    """A directory for the servers' output; afterwards, nothing else may have appeared in
    the working directory (tests run in ``tmp_path``)."""
    before = set(os.listdir(tmp_path))
    path = tmp_path / "logs"
    path.mkdir()
    yield path
    assert set(os.listdir(tmp_path)) - before == {"logs"}


def environment(**more: str) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), str(EXAMPLES)])
    return {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1",
            "WB_PG_DSN": DSN, **more}  # fmt: skip


@contextlib.contextmanager
def started(command: list[str], logs: Path, name: str, **popen: Any) -> Iterator[Any]:
    """``command`` in a new session, its output in ``logs/name.log``; at the end the whole
    session (a server and its workers) is killed if anything of it is left."""
    with open(logs / f"{name}.log", "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def output(logs: Path, name: str) -> str:
    return (logs / f"{name}.log").read_text(errors="replace")


def assert_quiet(text: str) -> None:
    """No record lost, no traceback, no batcher left open for the library to close."""
    trouble = ("record(s) lost", "Traceback", "was not closed", "Task was destroyed")
    found = [w for w in trouble if w in text]
    assert not found, text


def stop(proc: Any, sig: int, within: float) -> float:
    """Send ``sig`` to ``proc`` and wait for it to exit; the seconds it took."""
    started_at = time.monotonic()
    proc.send_signal(sig)
    proc.wait(within)
    return time.monotonic() - started_at


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


# -- HTTP load ----------------------------------------------------------------------------
def request(port: int, method: str, path: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Load:
    """Clients POSTing ``/records/<id>`` with fresh ids from several threads until stopped
    (or ``limit`` requests); remembers every id sent and the answer it got."""

    def __init__(self, port: int, threads: int = 8, limit: int = 20_000) -> None:
        self.port, self.limit = port, limit
        self.answers: dict[str, int | str] = {}
        self.pids: set[int] = set()
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            n = next(self._ids)
            if n >= self.limit:
                return
            rid = f"r{n}"
            self.answers[rid] = "sending"
            try:
                status, body = request(self.port, "POST", f"/records/{rid}", timeout=3)
            except OSError as exc:  # refused, reset or timed out: the server is going
                self.answers[rid] = type(exc).__name__
                time.sleep(0.02)
                continue
            self.answers[rid] = status
            if status == 200:
                self.pids.add(json.loads(body)["pid"])

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ok) < count:
            assert time.monotonic() < deadline, f"only {len(self.ok)} answers: {self.summary}"
            time.sleep(0.02)

    @property
    def ok(self) -> set[str]:
        return {r for r, s in self.answers.copy().items() if s == 200}  # copy: atomic

    @property
    def summary(self) -> Counter[int | str]:
        return Counter(self.answers.values())


def wait_ready(port: int, batchers: int, timeout: float = 30) -> None:
    """Until ``/writebehind/health`` has said ok for ``batchers`` distinct batcher names
    (workers whose batchers share a name: 1)."""
    names: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(names) < batchers:
        assert time.monotonic() < deadline, f"not ready: {names}"
        try:
            status, body = request(port, "GET", "/writebehind/health", timeout=2)
        except OSError:
            time.sleep(0.05)
            continue
        if status == 200:
            names.add(json.loads(body)["batcher"])
        else:
            time.sleep(0.05)


def serve_and_stop(
    proc: Any, port: int, batchers: int, sig: int, within: float
) -> tuple[Load, float]:
    """Wait for the server, load it for a second, send ``sig`` while the load goes on, and
    keep loading until the server is gone; the load, and how long the server took to go."""
    wait_ready(port, batchers)
    with Load(port) as load:
        time.sleep(1.0)
        load.wait_for(50)
        took = stop(proc, sig, within)
    return load, took


# -- 1. FastAPI under uvicorn --workers 2 -------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_fastapi_under_uvicorn_with_two_workers(
    table: str, logs: Path, sig: signal.Signals
) -> None:
    """``uvicorn --workers 2`` with examples/deploy_fastapi.py, under load, stopped with
    SIGTERM (or SIGINT): every record a client got a 200 for is in the table once, from
    both workers, and uvicorn is gone well within its graceful timeout."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    command = [sys.executable, "-m", "uvicorn", "deploy_fastapi:app", "--workers", "2"]
    command += ["--fd", str(sock.fileno()), "--timeout-graceful-shutdown", "5"]
    command += ["--log-level", "warning"]
    with started(command, logs, "uvicorn", env=environment(WB_TABLE=table),
                 pass_fds=[sock.fileno()]) as proc:  # fmt: skip
        sock.close()
        load, took = serve_and_stop(proc, port, batchers=2, sig=sig, within=15)
    assert_answered_200(load)
    rows, pids = written(table)
    assert_exactly_once(rows, load.ok, set(load.answers))
    assert len(pids) == 2
    assert pids == load.pids
    assert took < 5 + 5, took  # graceful timeout + the batcher's close_timeout
    assert_quiet(output(logs, "uvicorn"))
    print(f"{sig.name}: {len(load.answers)} sent, {load.summary}, {sum(rows.values())} rows "
          f"from {len(pids)} workers, exit {took:.2f} s after the signal")  # fmt: skip


# -- 2. gunicorn gthread, with and without --preload (Flask; Django with --preload) --------
GUNICORN_APPS = {  # the options (the Flask example is also a gunicorn config), the app
    "flask": (["-c", str(EXAMPLES / "deploy_gunicorn.py")], "deploy_gunicorn:create_app()"),
    "django": (["-k", "gthread", "--threads", "8", "--no-control-socket"],
               "deploy_django:get_application()"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("app", "preload"),
    [("flask", False), ("flask", True), ("django", True)],
    ids=["flask-fork-then-import", "flask-preload", "django-preload"],
)
def test_gunicorn_gthread_sigterm_under_load(
    table: str, logs: Path, app: str, preload: bool
) -> None:
    """``gunicorn -c examples/deploy_gunicorn.py --workers 2`` (gthread; Flask, and the
    Django project with ``--preload``), with and without ``--preload``, no hook, SIGTERM to
    the master under load: every record a client got a 200 for is in the table exactly once (the
    preloaded master's batcher never writes a worker's records), nothing else is, and the
    master is gone within its graceful timeout (5 s)."""
    options, target = GUNICORN_APPS[app]
    sock = listening_socket()
    port = sock.getsockname()[1]
    command = [sys.executable, "-m", "gunicorn", *options]
    command += ["--workers", "2", "--graceful-timeout", "5", "--bind", f"fd://{sock.fileno()}"]
    command += ["--log-level", "warning", *(["--preload"] if preload else []), target]
    with started(command, logs, "gunicorn", env=environment(WB_TABLE=table),
                 pass_fds=[sock.fileno()]) as proc:  # fmt: skip
        sock.close()
        master = proc.pid
        load, took = serve_and_stop(proc, port, batchers=1, sig=signal.SIGTERM, within=15)
        assert proc.returncode == 0
    assert_answered_200(load)
    rows, pids = written(table)
    assert_exactly_once(rows, load.ok, set(load.answers))
    assert master not in pids
    assert pids == load.pids
    assert took < 5, took
    assert_quiet(output(logs, "gunicorn"))
    print(f"{app} preload={preload}: {len(load.answers)} sent, {load.summary}, "
          f"{sum(rows.values())} rows from {len(pids)} workers, master gone "
          f"{took:.2f} s after SIGTERM")  # fmt: skip


# -- 3. a Celery worker, prefork pool, Redis broker ---------------------------------------
@pytest.fixture
def redis_db() -> Iterator[Any]:
    """The Redis database of these tests; fails (never skips) when Redis is down."""
    import redis

    client = redis.Redis.from_url(REDIS, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {REDIS} and is not reachable: {exc!r}")
    yield client
    client.close()


def test_celery_prefork_worker_warm_shutdown(table: str, logs: Path, redis_db: Any) -> None:
    """``celery worker --pool prefork --concurrency 2`` with examples/deploy_celery.py: 400
    tasks sent, SIGTERM (warm shutdown) once 100 have succeeded: every task that succeeded
    has its record in the table exactly once, written by the two pool processes."""
    from celery import Celery

    queue = f"deploy_{uuid.uuid4().hex[:12]}"
    command = [sys.executable, "-m", "celery", "-A", "deploy_celery", "worker"]
    command += ["--pool", "prefork", "--concurrency", "2", "--loglevel", "warning"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    env = environment(WB_TABLE=table, WB_CELERY_BROKER=REDIS, WB_CELERY_QUEUE=queue)
    client = Celery(broker=REDIS, backend=REDIS)
    results = []
    try:
        with started(command, logs, "celery", env=env) as proc:
            results = [
                client.send_task("deploy_celery.record", args=[f"t{n}"], queue=queue)
                for n in range(400)
            ]
            deadline = time.monotonic() + 30
            while sum(r.successful() for r in results[:100]) < 100:
                assert time.monotonic() < deadline, output(logs, "celery")
                time.sleep(0.05)
            # billiard's pool processes wait up to 30 s (300 x 0.1 s) for the main process
            # to acknowledge their last results before they exit; in about one warm
            # shutdown in four here the main process has stopped reading by then
            # (billiard/pool.py, _ensure_messages_consumed), whatever the tasks do
            took = stop(proc, signal.SIGTERM, within=45)
            assert proc.returncode == 0, output(logs, "celery")
        done = {r.result for r in results if r.successful()}
    finally:
        for r in results:
            r.forget()
        client.close()
        for key in redis_db.scan_iter(f"*{queue}*"):
            redis_db.delete(key)
    rows, pids = written(table)
    assert_exactly_once(rows, done, {f"t{n}" for n in range(400)})
    assert len(pids) == 2
    assert took < 40, took
    assert_quiet(output(logs, "celery"))
    print(f"celery: 400 sent, {len(done)} succeeded, {sum(rows.values())} rows from "
          f"{len(pids)} pool processes, worker gone {took:.2f} s after SIGTERM")  # fmt: skip


# -- 4. Django: AppConfig.ready ------------------------------------------------------------
DJANGO_CLIENT = """
import json
import sys
from wsgiref.util import setup_testing_defaults

import deploy_django

application = deploy_django.get_application()  # settings in code; django.setup(): ready()
from django.test import Client

client = Client()
statuses = [client.post(f"/records/r{n}").status_code for n in range(int(sys.argv[1]))]
environ = {"PATH_INFO": "/writebehind/stats"}  # the stats endpoint mounted beside Django
setup_testing_defaults(environ)
stats = json.loads(b"".join(application(environ, lambda status, headers: None)))
print("statuses", sorted(set(statuses)), "accepted", stats["stats"]["accepted"], flush=True)
# no close here: leaving the process closes the batcher (ready() registered it with atexit)
"""


def test_django_appconfig_ready_then_exit(table: str, logs: Path, tmp_path: Path) -> None:
    """examples/deploy_django.py driven by Django's test client in a process of its own:
    300 requests answered 200, the process returns, 300 rows (the batcher opened in
    ``ready()`` was flushed at exit, without a warning)."""
    script = tmp_path / "logs" / "client.py"
    script.write_text(textwrap.dedent(DJANGO_CLIENT))
    done = subprocess.run(
        [sys.executable, str(script), "300"], env=environment(WB_TABLE=table),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "statuses [200] accepted 300" in done.stdout, done.stdout + done.stderr
    rows, _ = written(table)
    sent = {f"r{n}" for n in range(300)}
    assert_exactly_once(rows, sent, sent)
    assert_quiet(done.stderr)


# -- 5. multiprocessing.Pool(initializer=...) ----------------------------------------------
POOL = """
import sys
import deploy_multiprocessing as recipe

if __name__ == "__main__":
    done = recipe.run(sys.argv[1], 1000, method=sys.argv[2])
    print("done", len(done), flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool_close_and_join(
    table: str, logs: Path, tmp_path: Path, method: str
) -> None:
    """examples/deploy_multiprocessing.py: a batcher per pool worker made by the
    initializer; ``close()`` then ``join()``: the workers end normally, the library's
    multiprocessing finaliser flushes each batcher: 1000 jobs, 1000 rows."""
    script = tmp_path / "logs" / "pool.py"
    script.write_text(textwrap.dedent(POOL))
    done = subprocess.run(
        [sys.executable, str(script), table, method], env=environment(),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "done 1000" in done.stdout, done.stdout + done.stderr
    rows, pids = written(table)
    sent = {f"j{n}" for n in range(1000)}
    assert_exactly_once(rows, sent, sent)
    assert 1 <= len(pids) <= 2  # a worker that starts late may get no job at all
    # each worker's batcher was closed by the finaliser, which says it was left open (the
    # pool has no hook to close it in)
    # the rows are the finaliser's work (its line is INFO, not shown by default)
    print(f"{method}: 1000 jobs, {sum(rows.values())} rows from {len(pids)} worker(s)")


# -- a Batcher restarted in a forked child (problems these recipes found, fixed in 30ad517) --
FORKED = """
import asyncio, os, sys, threading
import writebehind as wb

class SlowStart:
    # a sink whose start takes a while, as a PostgreSQL pool's first connection does
    async def start(self):
        await asyncio.sleep(0.3)
    async def write(self, batch):
        pass

b = wb.Batcher(SlowStart(), linger=0.05)
b.start()                              # in the parent: a --preload master, a Celery master
pid = os.fork()
if pid == 0:
{child}
    os._exit(0)
os.waitpid(pid, 0)
b.close()
"""


def run_forked(tmp_path: Path, child: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "logs" / "forked.py"
    script.write_text(FORKED.replace("{child}", textwrap.indent(textwrap.dedent(child), "    ")))
    return subprocess.run(
        [sys.executable, str(script)], env=environment(), capture_output=True, text=True,
        timeout=30, cwd=tmp_path,
    )  # fmt: skip


def test_concurrent_first_adds_in_a_fork_child_all_succeed(logs: Path, tmp_path: Path) -> None:
    """In a forked child, eight threads whose add() is the batcher's first use (gunicorn
    --preload gthread: a worker's first concurrent requests) all succeed (they failed with
    'the batcher is not started': 24 and 35 of 200 requests got 500 under gunicorn)."""
    done = run_forked(tmp_path, """
        errors = []
        def add(n):
            try:
                b.add({"n": n})
            except Exception as exc:
                errors.append(exc)
        threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print("errors", len(errors), errors[:1], flush=True)
        b.close()
    """)  # fmt: skip
    assert "errors 0 []" in done.stdout, done.stdout + done.stderr


def test_start_in_a_fork_child_then_add(logs: Path, tmp_path: Path) -> None:
    """A forked child that starts the batcher itself (in gunicorn's post_fork hook, say) can
    then add() (it raised 'the batcher was already started')."""
    done = run_forked(tmp_path, """
        b.start()
        try:
            b.add({"n": 1})
            print("added", flush=True)
        except Exception as exc:
            print("add:", repr(exc), flush=True)
        b.close()
    """)  # fmt: skip
    assert "added" in done.stdout, done.stdout + done.stderr


def test_a_fork_child_that_used_the_batcher_exits_quietly(logs: Path, tmp_path: Path) -> None:
    """A forked child uses the restarted batcher, closes it and exits normally (a gunicorn
    --preload worker on SIGTERM): nothing on stderr (asyncio printed 'Task was destroyed but
    it is pending!' for the parent's flusher task, in every worker)."""
    done = run_forked(tmp_path, """
        b.add({"n": 1})
        b.close()
        sys.stdout.flush()
        import gc; gc.collect()
    """)  # fmt: skip
    assert done.returncode == 0
    assert "Task was destroyed" not in done.stderr, done.stderr


def test_a_fork_child_is_healthy_before_its_first_record(logs: Path, tmp_path: Path) -> None:
    """In a forked child, the stats endpoint's /health answers 200 before the child's first
    record (a gunicorn --preload worker behind a readiness probe; it answered 503 "not
    started" until the worker's first add(), which a probe that gates the traffic would
    never let come)."""
    done = run_forked(tmp_path, """
        from wsgiref.util import setup_testing_defaults
        from writebehind.integrations.wsgi import wsgi_app
        environ = {"PATH_INFO": "/health"}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(wsgi_app(b)(environ, lambda s, h: status.append(s)))
        print("health", status[0], body.decode().strip(), flush=True)
        b.close()
    """)  # fmt: skip
    assert "health 200 OK" in done.stdout, done.stdout + done.stderr
