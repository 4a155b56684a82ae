"""``writebehind dlq list|show|replay|purge``, called through ``main()``."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from writebehind._deadletter import DeadLetterEntry
from writebehind.cli.main import main
from writebehind.dlq import PostgresDeadLetter, SQLiteDeadLetter

from .pg import DSN

NOW = time.time()


def put(store: Any, records: list[tuple[Any, str, str]]) -> None:
    """Store ``(record, batcher, error)`` entries (the first ones older), then close."""

    async def go() -> None:
        await store.put(
            [
                DeadLetterEntry(
                    record=rec,
                    error=err,
                    message=f"{err} for\nrecord {i}: " + "x" * 80,
                    sink="SQLiteSink('a.db', table='agents', key=('id',))",
                    batcher=batcher,
                    attempts=i + 1,
                    at=NOW - 1000 + i,
                )
                for i, (rec, batcher, err) in enumerate(records)
            ]
        )
        await store.close()

    asyncio.run(go())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A dead-letter file with four entries: two batchers, two error classes, one set."""
    path = tmp_path / "dl.db"
    put(
        SQLiteDeadLetter(path),
        [
            ({"id": "a", "updated_at": 1}, "hb", "PermanentSinkError"),
            ({"id": "b", "updated_at": 1}, "hb", "RetriableSinkError"),
            ({"id": "c", "updated_at": 2}, "audit", "PermanentSinkError"),
            ({"id": "d", "tags": {"x"}}, "hb", "PermanentSinkError"),
        ],
    )
    return path


def target(tmp_path: Path) -> Path:
    path = tmp_path / "target.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, updated_at INTEGER NOT NULL)")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["dlq", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_prints_a_table_and_filters(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """list shows id, time, batcher, error and the message on one truncated line."""
    code, out, err = run(capsys, "list", "--db", str(db))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "time", "batcher", "error", "message"]
    assert len(lines) == 5
    assert lines[1].split()[:4][0] == "1"
    assert lines[1].split()[2:4] == ["hb", "PermanentSinkError"]
    assert lines[1].endswith("...")
    assert "4 shown, 4 in the store" in err
    code, out, _ = run(capsys, "list", "--db", str(db), "--error", "PermanentSinkError")
    assert [ln.split()[0] for ln in out.splitlines()[1:]] == ["1", "3", "4"]
    code, out, _ = run(capsys, "list", "--db", str(db), "--batcher", "hb", "--limit", "2")
    assert [ln.split()[0] for ln in out.splitlines()[1:]] == ["1", "2"]


def test_list_json_lines(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object per entry, with the stored record."""
    code, out, _ = run(capsys, "list", "--db", str(db), "--json", "--after", "2")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [3, 4]
    assert rows[0]["record"] == {"id": "c", "updated_at": 2}
    assert rows[0]["batcher"] == "audit"
    assert rows[1]["encoding"] == "repr"


def test_show_prints_the_whole_entry(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """show prints every field and the record as indented JSON; a repr record says so."""
    code, out, _ = run(capsys, "show", "3", "--db", str(db))
    assert code == 0
    assert "batcher:  audit" in out
    assert "attempts: 3" in out
    assert "type:     dict" in out
    assert "SQLiteSink('a.db'" in out
    record = out.split("record:\n", 1)[1]
    assert json.loads(record) == {"id": "c", "updated_at": 2}
    code, out, _ = run(capsys, "show", "4", "--db", str(db))
    assert code == 0
    assert "cannot be replayed" in out
    assert "{'x'}" in out


def test_show_unknown_id_exits_1(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An id the store does not hold is reported, exit 1."""
    code, _, err = run(capsys, "show", "99", "--db", str(db))
    assert code == 1
    assert "no entry with id 99" in err


def test_missing_file_is_a_clear_error_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every subcommand refuses a missing store file with exit 2 and does not create it."""
    missing = tmp_path / "nope.db"
    for argv in (["list"], ["show", "1"], ["replay", "--dry-run"], ["purge", "--all", "--yes"]):
        code, _, err = run(capsys, *argv, "--db", str(missing))
        assert code == 2, argv
        assert "no dead-letter file at" in err
    assert not missing.exists()


def test_a_store_must_be_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """There is no default store: without --db or --dsn every subcommand is a usage error
    (exit 2) that says how to name one, and a dead_letters.db in the working directory is
    neither read nor touched."""
    here = tmp_path / "dead_letters.db"  # tests run in tmp_path
    put(SQLiteDeadLetter(here), [({"id": "a"}, "hb", "PermanentSinkError")])
    before = here.read_bytes()
    for argv in (
        ["list"],
        ["show", "1"],
        ["replay", "--dry-run"],
        ["replay", "--to-db", "x.db", "--to-table", "t"],
        ["purge", "--all", "--yes"],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert "name the dead-letter store: --db PATH" in err, argv
        assert "--dsn DSN" in err
        assert out == ""
    assert here.read_bytes() == before


CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
HOSTILE = "boom \x1b[2J\x1b]0;pwned\x07 \x9b31m \u202eevil\rover"


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A store whose entry holds terminal escape sequences in every text and the record."""
    path = tmp_path / "hostile.db"

    async def go() -> None:
        store = SQLiteDeadLetter(path)
        await store.put(
            [
                DeadLetterEntry(
                    record={"id": "\x1b[31mred", "note": "\x9b2J", "multi": "a\nb"},
                    error="Permanent\x1b[8mSinkError",
                    message=HOSTILE + "\nsecond line",
                    sink="Sink(\x1b]8;;http://x\x07)",
                    batcher="hb\x1b[1m",
                    attempts=1,
                    at=NOW,
                )
            ]
        )
        await store.close()

    asyncio.run(go())
    return path


def test_human_output_escapes_terminal_controls(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """list and show print no terminal control from stored data (ESC, C1, BEL, CR, bidi
    overrides): each is shown escaped; show keeps a multi-line message under its label."""
    code, out, _ = run(capsys, "list", "--db", str(hostile))
    assert code == 0
    assert not CONTROLS.search(out), repr(out)
    assert "\\x1b[2J" in out
    assert len(out.splitlines()) == 2  # the header and one entry: no forged lines
    code, out, _ = run(capsys, "show", "1", "--db", str(hostile))
    assert code == 0
    assert not CONTROLS.search(out), repr(out)
    for shown in ("\\x1b[2J", "\\x9b31m", "\\u202eevil", "\\rover", "hb\\x1b[1m"):
        assert shown in out, shown
    assert "\n          second line" in out


def test_list_json_prints_the_record_as_plain_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store's tagged encoding ({"$dt": ...}) is internal: --json prints datetimes,
    UUIDs, decimals, bytes and tuples as plain JSON values a tool can read."""
    import datetime as dt
    import decimal
    import uuid

    path = tmp_path / "typed.db"
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    when = dt.datetime(2026, 12, 3, 6, 0, tzinfo=dt.UTC)
    record = {"id": u, "at": when, "amount": decimal.Decimal("1.50"), "raw": b"\x00\x01",
              "pair": (1, "a"), "inf": float("inf")}  # fmt: skip
    put(SQLiteDeadLetter(path), [(record, "hb", "PermanentSinkError")])
    code, out, _ = run(capsys, "list", "--db", str(path), "--json")
    assert code == 0
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["record"] == {
        "id": str(u), "at": "2026-12-03T06:00:00+00:00", "amount": "1.50", "raw": "AAE=",
        "pair": [1, "a"], "inf": "inf",
    }  # fmt: skip
    assert "$" not in out


def test_list_json_stays_exact(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json is for programs: the stored texts come back exactly, controls included."""
    code, out, _ = run(capsys, "list", "--db", str(hostile), "--json")
    assert code == 0
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["message"] == HOSTILE + "\nsecond line"
    assert row["batcher"] == "hb\x1b[1m"
    assert row["record"]["id"] == "\x1b[31mred"


def test_replay_into_sqlite(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """replay writes the records to the target table, deletes their entries, keeps the one
    it cannot replay, and exits 1 because one stays."""
    to = target(tmp_path)
    code, out, err = run(
        capsys, "replay", "--db", str(db), "--to-db", str(to), "--to-table", "agents",
        "--key", "id", "--version", "updated_at", "--ids", "1,2,3,4",
    )  # fmt: skip
    assert code == 1
    assert "committed      3" in out
    assert "refused        1" in out
    assert "kept           1" in out
    assert "refused ids (stored as repr, not replayable): 4" in err
    with sqlite3.connect(to) as c:
        assert dict(c.execute("SELECT id, updated_at FROM agents")) == {"a": 1, "b": 1, "c": 2}
    code, out, _ = run(capsys, "list", "--db", str(db), "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [4]


def test_replay_exit_codes_and_a_fresh_entry_for_a_refused_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replay that writes everything exits 0. A record the target refuses again (NOT NULL)
    is dead-lettered into the same store as a fresh entry (the old one goes), under the
    batcher name it had (it was renamed "dlq-replay" before): exit 1."""
    db = tmp_path / "dl.db"
    put(
        SQLiteDeadLetter(db),
        [({"id": "a", "updated_at": 1}, "hb", "E"), ({"id": "z", "updated_at": None}, "hb", "E")],
    )
    to = target(tmp_path)
    argv = ["--db", str(db), "--to-db", str(to), "--to-table", "agents", "--key", "id"]
    code, out, _ = run(capsys, "replay", *argv, "--ids", "1")
    assert code == 0
    assert "deleted        1" in out
    code, out, _ = run(capsys, "replay", *argv)
    assert code == 1  # dead-lettered again: the old entry is replaced, none is lost
    assert "dead_lettered  1" in out
    code, out, _ = run(capsys, "list", "--db", str(db), "--json")
    (fresh,) = [json.loads(line) for line in out.splitlines()]
    assert (fresh["id"], fresh["batcher"], fresh["error"]) == (3, "hb", "PermanentSinkError")
    assert fresh["record"] == {"id": "z", "updated_at": None}


def test_replay_dry_run_and_usage_errors(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run changes nothing; a replay without a target, or --version without --key,
    is a usage error (exit 2)."""
    code, out, _ = run(capsys, "replay", "--db", str(db), "--dry-run", "--limit", "3")
    assert code == 0
    assert "replayable  3" in out
    assert "committed" not in out
    code, _, err = run(capsys, "replay", "--db", str(db))
    assert code == 2
    assert "--to-db PATH or --to-dsn DSN" in err
    to = str(target(tmp_path))
    code, _, err = run(
        capsys, "replay", "--db", str(db), "--to-db", to, "--to-table", "agents", "--version", "v"
    )
    assert code == 2
    assert "--version needs --key" in err
    code, _, err = run(capsys, "replay", "--db", str(db), "--to-db", to, "--to-table", "a;b")
    assert code == 2
    assert "not an allowed name" in err
    code, out, _ = run(capsys, "list", "--db", str(db), "--json")
    assert len(out.splitlines()) == 4


def test_purge_asks_for_yes(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --yes and without a terminal to ask on, purge refuses (exit 2)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, _, err = run(capsys, "purge", "--db", str(db), "--all")
    assert code == 2
    assert "add --yes" in err
    code, _, err = run(capsys, "purge", "--db", str(db))
    assert code == 2  # one of --ids, --before, --all is required
    code, out, _ = run(capsys, "list", "--db", str(db), "--json")
    assert len(out.splitlines()) == 4


def test_purge_by_ids_before_and_all(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """purge deletes by id, by age (ISO time, naive meaning UTC) or everything."""
    code, out, _ = run(capsys, "purge", "--db", str(db), "--ids", "1,99", "--yes")
    assert (code, out) == (0, "deleted 1\n")
    cut = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 1000 + 2))
    code, out, _ = run(capsys, "purge", "--db", str(db), "--before", cut, "--yes")
    assert (code, out) == (0, "deleted 1\n")  # entry 2 (entry 3 is at the cut, not before)
    code, _, err = run(capsys, "purge", "--db", str(db), "--before", "yesterday", "--yes")
    assert code == 2
    assert "not an ISO 8601 time" in err
    code, out, _ = run(capsys, "purge", "--db", str(db), "--all", "--yes")
    assert (code, out) == (0, "deleted 2\n")


def test_dlq_without_a_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``writebehind dlq`` alone prints its usage and exits 2."""
    code, _, err = run(capsys)
    assert code == 2
    assert "list" in err
    assert "replay" in err


@pytest.mark.server
def test_list_and_purge_a_postgres_store(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dsn with --table reads and purges a PostgreSQL store; env:NAME reads the DSN from
    the environment."""
    table = f"dl_{uuid.uuid4().hex[:12]}"
    put(PostgresDeadLetter(DSN, table=table), [({"id": "a"}, "hb", "PermanentSinkError")])
    monkeypatch.setenv("WB_TEST_DLQ_DSN", DSN)
    try:
        code, out, _ = run(
            capsys, "list", "--dsn", "env:WB_TEST_DLQ_DSN", "--dlq-table", table, "--json"
        )
        assert code == 0
        assert json.loads(out)["record"] == {"id": "a"}
        code, out, _ = run(capsys, "purge", "--dsn", DSN, "--dlq-table", table, "--all", "--yes")
        assert (code, out) == (0, "deleted 1\n")
    finally:
        asyncio.run(_drop(table))


@pytest.mark.server
def test_replay_into_postgres(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--to-dsn replays into a PostgreSQL table through PostgresSink."""
    db = tmp_path / "dl.db"
    put(SQLiteDeadLetter(db), [({"id": "a", "n": 1}, "hb", "E"), ({"id": "b", "n": 2}, "hb", "E")])
    table = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_sql(f"CREATE TABLE {table} (id text PRIMARY KEY, n integer)"))
    try:
        code, out, _ = run(
            capsys, "replay", "--db", str(db), "--to-dsn", DSN, "--to-table", table, "--key", "id"
        )
        assert code == 0
        assert "committed      2" in out
        assert asyncio.run(_sql(f"SELECT count(*) FROM {table}")) == 2
    finally:
        asyncio.run(_drop(table))


@pytest.mark.server
def test_postgres_errors_do_not_show_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    """A store that cannot be reached is reported (exit 1) without the DSN's password."""
    code, _, err = run(capsys, "list", "--dsn", "postgresql://u:sekrit-canary@127.0.0.1:1/x")
    assert code == 1
    assert "dead-letter store" in err
    assert "sekrit-canary" not in err


def test_a_dsn_from_an_unset_environment_variable_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--dsn env:NAME`` with NAME unset exits 2 naming the variable."""
    code, _, err = run(capsys, "list", "--dsn", "env:WB_SURELY_UNSET_VARIABLE")
    assert code == 2
    assert "WB_SURELY_UNSET_VARIABLE" in err


async def _sql(query: str) -> Any:
    conn = await asyncpg.connect(DSN)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def _drop(table: str) -> None:
    await _sql(f"DROP TABLE IF EXISTS {table}")
