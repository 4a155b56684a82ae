"""The ``writebehind`` command line (``writebehind demo``) and the runnable examples."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import writebehind
from writebehind.cli.main import main

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
LOST_ZERO = re.compile(r"^\s*lost\s+0\s*$", re.MULTILINE)
SMALL_DEMO = ["demo", "--agents", "200", "--duration", "1"]


def count_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (n,) = conn.execute("SELECT COUNT(DISTINCT id) FROM agent_heartbeats").fetchone()
    return int(n)


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


def test_demo_with_rich(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without ``--plain`` the rich display runs and the final table still says lost 0."""
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
    assert re.search(r"lost\s+│\s+0\s", out), out
    assert count_rows(db) == 50


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


def test_dsn_is_not_available_yet(capsys: pytest.CaptureFixture[str]) -> None:
    """``--dsn`` exits 2 with a clear message until the PostgreSQL sink exists."""
    assert main(["demo", "--dsn", "postgresql://localhost/db"]) == 2
    assert "the PostgreSQL sink is not available yet" in capsys.readouterr().err


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


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    """Each example script runs to completion with exit code 0."""
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
