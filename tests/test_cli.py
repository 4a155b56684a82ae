"""The ``writebehind`` command line (``writebehind demo``) and the runnable examples."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import writebehind
from tests.example_output import EXPECTED as EXAMPLE_OUTPUT
from tests.example_output import check_example_output
from tests.pg import DSN as PG_DSN
from tests.redis_server import SHARED_URL as REDIS_URL
from writebehind.cli.demo import DemoConfig
from writebehind.cli.main import main

SERVER = re.compile(r"postgres|redis")  # examples that need a server: they fail without it
EXAMPLES = [
    pytest.param(p, id=p.name, marks=[pytest.mark.server] if SERVER.search(p.name) else [])
    for p in sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
]
LOST_ZERO = re.compile(r"^\s*lost\s+0\s*$", re.MULTILINE)
SMALL_DEMO = ["demo", "--agents", "200", "--duration", "1"]


def count_rows(path: Path, table: str = "agent_heartbeats") -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (n,) = conn.execute(f"SELECT COUNT(DISTINCT id) FROM {table}").fetchone()
    return int(n)


def number(out: str, label: str) -> int:
    """The integer at the start of the final table's ``label`` row."""
    m = re.search(rf"^\s*{re.escape(label)}\s+([\d,]+)", out, re.MULTILINE)
    assert m is not None, out
    return int(m.group(1).replace(",", ""))


def pg_connect() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_DSN} and is not reachable: {exc!r}")


def pg_fetch(sql: str, *params: object) -> object:
    with pg_connect() as conn:
        row = conn.execute(sql.encode(), params or None).fetchone()
    return None if row is None else row[0]


def pg_execute(sql: str) -> None:
    with pg_connect() as conn:
        conn.execute(sql.encode())


def pg_rows(table: str) -> int:
    n = pg_fetch(f"SELECT count(DISTINCT id) FROM {table}")
    assert isinstance(n, int)
    return n


def test_demo_plain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A small plain demo exits 0, reports nothing lost and leaves one row per agent."""
    db = tmp_path / "demo.db"
    assert main([*SMALL_DEMO, "--plain", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert LOST_ZERO.search(out), out
    assert "naive: statements" in out
    assert "OK: 200 rows, one per agent" in out
    assert count_rows(db) == 200


def test_demo_in_a_subprocess(tmp_path: Path) -> None:
    """``python -m writebehind.cli.main demo`` exits 0, loses nothing and writes every agent."""
    db = tmp_path / "demo.db"
    done = subprocess.run(
        [sys.executable, "-m", "writebehind.cli.main", *SMALL_DEMO, "--plain", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert LOST_ZERO.search(done.stdout), done.stdout
    assert count_rows(db) == 200


def test_demo_with_rich(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``--plain``, on a terminal, the rich display runs and the final table still
    says lost 0."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    db = tmp_path / "demo.db"
    args = [
        "demo",
        "--agents",
        "50",
        "--duration",
        "0.5",
        "--interval",
        "0.5",
        "--no-naive",
        "--db",
        str(db),
    ]
    assert main(args) == 0
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().out)  # the terminal's codes
    assert re.search(r"lost\s+│\s+0\s", out), out
    assert count_rows(db) == 50


def test_demo_into_a_pipe_prints_plain_lines(tmp_path: Path) -> None:
    """Into a pipe (not a terminal) the demo prints plain lines, not a rich table wrapped
    and padded to 80 columns."""
    db = tmp_path / "demo.db"
    proc = subprocess.run(
        [sys.executable, "-m", "writebehind.cli", *SMALL_DEMO, "--no-naive", "--db", str(db)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert LOST_ZERO.search(proc.stdout), proc.stdout
    assert "│" not in proc.stdout
    assert not [line for line in proc.stdout.splitlines() if line != line.rstrip()]


def test_demo_falls_back_to_plain_without_rich(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When rich cannot be imported the demo prints plain lines instead of failing."""
    for name in ("rich", "rich.console", "rich.live", "rich.table", "rich.text"):
        monkeypatch.setitem(sys.modules, name, None)
    db = tmp_path / "demo.db"
    args = [
        "demo",
        "--agents",
        "50",
        "--duration",
        "0.5",
        "--interval",
        "0.5",
        "--no-naive",
        "--db",
        str(db),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert LOST_ZERO.search(out), out
    assert "│" not in out
    assert "elapsed" in out


def test_demo_rejects_a_table_that_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing table without the demo's columns is a usage error (exit 2), named."""
    db = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE agent_heartbeats (id TEXT PRIMARY KEY)")
    assert main([*SMALL_DEMO, "--plain", "--db", str(db)]) == 2
    assert "updated_at" in capsys.readouterr().err


def test_default_shaped_run_coalesces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Agents heartbeating faster than the linger, max_batch auto: heartbeats coalesce, fewer
    rows are written than heartbeats sent, and the table still holds the newest of each."""
    db = tmp_path / "demo.db"
    args = ["demo", "--agents", "200", "--interval", "0.1", "--linger", "0.5"]
    assert main([*args, "--duration", "1.5", "--plain", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    sent, written, coalesced = (
        number(out, "heartbeats sent"),
        number(out, "rows written"),
        number(out, "coalesced"),
    )
    assert sent == 3_000, out
    assert coalesced > 0, out
    assert written < sent, out
    assert written + coalesced == sent, out
    assert "5.00 expected" in out, out  # 15 heartbeats per agent over 3 windows of 0.5 s
    assert "max_batch 400 (auto)" in out, out
    assert LOST_ZERO.search(out), out
    assert "naive: statements" in out, out
    assert "OK: 200 rows, one per agent, newest heartbeat each" in out, out
    assert count_rows(db) == 200


def test_expected_coalescing() -> None:
    """The expected ratio: linger/interval per full window, bounded by the run's length, and
    1 when max_batch cuts batches before an agent heartbeats again."""
    default = DemoConfig()
    assert (default.batch_size, default.max_pending) == (20_000, 80_000)
    assert default.expected_coalescing()[0] == pytest.approx(10 / 3)  # 10 per agent, 3 windows
    assert DemoConfig(duration=20.0).expected_coalescing()[0] == pytest.approx(4.0)
    assert DemoConfig(linger=30.0).expected_coalescing()[0] == pytest.approx(10.0)
    assert DemoConfig(interval=5.0).expected_coalescing()[0] == 1.0
    ratio, why = DemoConfig(max_batch=500).expected_coalescing()
    assert ratio == 1.0
    assert "max_batch 500" in why


def test_reset_and_table_with_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--table`` names the table; without ``--reset`` earlier rows stay, with it they go."""
    db = tmp_path / "demo.db"
    small = [
        "demo",
        "--duration",
        "0.3",
        "--interval",
        "0.1",
        "--no-naive",
        "--plain",
        "--db",
        str(db),
    ]
    assert main([*small, "--agents", "30", "--table", "beats"]) == 0
    assert main([*small, "--agents", "20", "--table", "beats"]) == 0
    assert (
        "OK: 20 rows, one per agent, newest heartbeat each (plus 10 rows" in capsys.readouterr().out
    )
    assert count_rows(db, "beats") == 30
    assert main([*small, "--agents", "20", "--table", "beats", "--reset"]) == 0
    assert count_rows(db, "beats") == 20


def test_dsn_that_cannot_connect_exits_1_without_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable server is exit 1 (not 2, a usage error) with the DSN redacted; the
    password never shows, given on the command line or as ``env:NAME``."""
    dsn = "postgresql://root:canary-pw-7f3a@127.0.0.1:1/test"
    assert main(["demo", "--plain", "--dsn", dsn]) == 1
    captured = capsys.readouterr()
    assert "cannot connect to PostgreSQL at postgresql://root:***@127.0.0.1:1/test" in captured.err
    assert "canary-pw-7f3a" not in captured.out + captured.err
    monkeypatch.setenv("WB_TEST_DSN", dsn)
    assert main(["demo", "--plain", "--dsn", "env:WB_TEST_DSN"]) == 1
    captured = capsys.readouterr()
    assert "postgresql://root:***@127.0.0.1:1/test" in captured.err
    assert "canary-pw-7f3a" not in captured.out + captured.err
    assert main(["demo", "--plain", "--dsn", "env:WB_TEST_UNSET_NAME"]) == 2
    assert "WB_TEST_UNSET_NAME" in capsys.readouterr().err


def test_a_database_that_cannot_be_opened_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--db /proc/x.db`` (or a missing directory): one line naming the file, no traceback,
    exit 1; nothing is created."""
    for path in ("/proc/x.db", str(tmp_path / "no" / "such" / "dir" / "x.db")):
        assert main([*SMALL_DEMO, "--plain", "--db", path]) == 1
        err = capsys.readouterr().err
        assert f"cannot open the SQLite database {path!r}" in err, err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "no").exists()


def test_db_and_dsn_exclude_each_other_and_table_is_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--db`` with ``--dsn``, or a table name that is not a plain identifier: exit 2."""
    assert main(["demo", "--db", "x.db", "--dsn", "postgresql://localhost/db"]) == 2
    assert "not allowed with" in capsys.readouterr().err
    assert main(["demo", "--table", "agents; drop"]) == 2
    assert "--table" in capsys.readouterr().err
    assert main(["demo", "--max-batch", "many"]) == 2


@pytest.mark.server
def test_demo_against_postgres(capsys: pytest.CaptureFixture[str]) -> None:
    """``--dsn``: the demo writes PostgreSQL through PostgresSink, loses nothing, leaves one
    row per agent, and drops its scratch table for the naive replay."""
    table = f"demo_hb_{uuid.uuid4().hex[:12]}"
    try:
        args = ["demo", "--dsn", PG_DSN, "--table", table, "--agents", "200", "--duration", "1"]
        assert main([*args, "--plain"]) == 0
        out = capsys.readouterr().out
        assert LOST_ZERO.search(out), out
        assert "-> PostgreSQL" in out, out
        assert "naive: statements" in out, out
        assert "OK: 200 rows, one per agent, newest heartbeat each" in out, out
        assert pg_rows(table) == 200
        assert pg_fetch("SELECT to_regclass(%s) IS NULL", f"{table}_naive") is True
    finally:
        pg_execute(f"DROP TABLE IF EXISTS {table}")


@pytest.mark.server
def test_demo_against_postgres_reuses_or_resets_the_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second run reuses the table and checks only its own agents; ``--reset`` empties it.
    A password in the DSN never shows in the output."""
    table = f"demo_hb_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(PG_DSN)
    secret = parts.password or "canary-pw-9c1e"
    netloc = parts.netloc if parts.password else parts.netloc.replace("@", f":{secret}@", 1)
    dsn = urlunsplit(parts._replace(netloc=netloc))
    small = ["demo", "--dsn", dsn, "--table", table, "--duration", "0.5", "--no-naive"]
    try:
        assert main([*small, "--agents", "40", "--plain"]) == 0
        assert main([*small, "--agents", "30", "--plain"]) == 0
        out = capsys.readouterr().out
        assert "OK: 30 rows, one per agent, newest heartbeat each (plus 40 rows" in out, out
        assert pg_rows(table) == 70
        assert main([*small, "--agents", "25", "--reset"]) == 0  # the rich display
        captured = capsys.readouterr()
        assert pg_rows(table) == 25
        assert "***" in captured.out
        assert secret not in out + captured.out + captured.err
    finally:
        pg_execute(f"DROP TABLE IF EXISTS {table}")


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` prints the version and ``--help`` lists the demo, both exiting 0."""
    assert main(["--version"]) == 0
    assert writebehind.__version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing subcommand or an out-of-range flag is a usage error (exit 2)."""
    assert main([]) == 2
    assert main(["demo", "--agents", "0"]) == 2
    assert "--agents" in capsys.readouterr().err


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    """Each example script runs to completion with exit code 0 and prints what it is there
    to show (tests/example_output.py: its key lines, and every ``Stats`` it prints conserved
    with nothing lost)."""
    env = {
        **os.environ,
        "WB_PG_DSN": os.environ.get("WB_PG_DSN", PG_DSN),
        "WB_REDIS_URL": os.environ.get("WB_REDIS_URL", REDIS_URL),  # fails if Redis is not there
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    check_example_output(script.name, done.stdout)


def test_every_example_has_its_expected_output() -> None:
    """A new example gets its expected lines in tests/example_output.py, and none is stale."""
    assert sorted(EXAMPLE_OUTPUT) == sorted(p.values[0].name for p in EXAMPLES)  # type: ignore[union-attr]


@pytest.mark.server
def test_demo_fleet_keeps_to_its_capacity(capsys: pytest.CaptureFixture[str]) -> None:
    """``--fleet 2 --capacity 400``: two processes share one RedisSharedCapacity into one
    PostgreSQL table; the fleet's 5 s windows stay within +5% of 400/s and use at least 85%
    of it, each instance gets a share, nothing is lost, and the password never shows."""
    from tests.redis_server import SHARED_URL, shared_redis

    shared_redis()  # fails (never skips) when Redis is missing
    table = f"fleet_hb_{uuid.uuid4().hex[:12]}"
    try:
        args = ["demo", "--fleet", "2", "--capacity", "400", "--dsn", PG_DSN, "--redis",
                SHARED_URL, "--table", table, "--agents", "500", "--duration", "7"]  # fmt: skip
        assert main(args) == 0, capsys.readouterr()
        out = capsys.readouterr().out
        assert "lost: 0" in out, out
        windows = re.search(r"5 s windows \(fleet / capacity\): (.*)", out)
        assert windows, out
        shares = [float(w.rstrip("%")) for w in windows.group(1).split(", ")]
        assert shares, out
        assert all(85.0 <= w <= 105.0 for w in shares), out
        rates = [float(m.replace(",", "")) for m in re.findall(r"instance \d: +([\d,]+) ", out)]
        assert len(rates) == 2, out
        assert min(rates) >= 0.15 * sum(rates), out
        assert pg_rows(table) == 500
    finally:
        pg_execute(f"DROP TABLE IF EXISTS {table}")


def test_demo_fleet_flags_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    """--fleet needs --capacity and --dsn; --reserved must leave something to share."""
    assert main(["demo", "--fleet", "2"]) == 2
    assert "--capacity" in capsys.readouterr().err
    assert main(["demo", "--fleet", "2", "--capacity", "100"]) == 2
    assert "--dsn" in capsys.readouterr().err
    args = ["demo", "--fleet", "2", "--capacity", "100", "--reserved", "50", "--dsn", PG_DSN]
    assert main(args) == 2
    assert "--reserved" in capsys.readouterr().err
    assert main(["demo", "--fleet", "0", "--capacity", "100"]) == 2
