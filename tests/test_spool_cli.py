"""``writebehind spool inspect|verify|replay DIR``, called through ``main()``, on real spools
left by a batcher whose sink never answered (``GatedSink`` and a short close deadline)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import writebehind as wb
from writebehind.cli.main import main
from writebehind.testing import GatedSink

from .pg import DSN


def leave(spool: Path, records: list[dict[str, Any]], **options: Any) -> int:
    """Add ``records`` to a batcher on ``spool`` whose sink never answers; close it after
    0.2 s so that they stay SPOOLED. How many it left."""

    async def go() -> int:
        b = wb.AsyncBatcher(GatedSink(), spool=spool, linger=3600, **options)
        await b.start()
        for r in records:
            await b.add(r)
        report = await b.close(timeout=0.2)
        assert report.lost == 0
        return report.spooled

    return asyncio.run(go())


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A spool holding 7 records not done (20 adds over 7 keys: the newest of each)."""
    path = tmp_path / "spool"
    n = leave(path, [{"id": i % 7, "v": i} for i in range(20)], key="id", version="v")
    assert n == 7
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["spool", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def target(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "target.db"
    with sqlite3.connect(path) as c:
        c.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL{extra})")
    return path


def damage_a_frame(spool: Path) -> None:
    seg = sorted(p for p in spool.glob("*.seg") if p.stat().st_size)[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))


def test_inspect_prints_what_the_spool_holds(spool: Path, capsys: pytest.CaptureFixture[str]):
    """Records not done, recovered, the oldest record's age, bytes, segments, no damage;
    inspecting again finds the same: it takes nothing out of the spool."""
    code, out, _ = run(capsys, "inspect", str(spool))
    assert code == 0
    fields = {line[:11].strip(): line[11:] for line in out.splitlines()}
    assert fields["spool"] == str(spool)
    assert fields["records"].startswith("7 not done")
    assert fields["recovered"] == "7"
    assert re.fullmatch(r"\d+\.\d s ago", fields["oldest"])
    assert int(fields["bytes"].split()[0].replace(",", "")) > 0
    assert int(fields["segments"]) >= 1
    assert fields["damaged"] == "0 frames, 0 bytes"
    code, again, _ = run(capsys, "inspect", str(spool))
    assert code == 0
    assert again.splitlines()[1] == out.splitlines()[1]


def test_inspect_json(spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", str(spool), "--json")
    assert code == 0
    got = json.loads(out)
    assert (got["records"], got["recovered"], got["damaged_frames"]) == (7, 7, 0)
    assert got["path"] == str(spool)
    assert got["oldest_age"] >= 0
    assert got["bytes"] > 0
    assert got["moved_aside"] == []


def test_a_spool_held_by_a_batcher_is_exit_1_naming_it(
    spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While a batcher holds the spool's lock, every command says so on one line (no
    traceback) and exits 1; the batcher's spool is not touched."""
    to = target(spool.parent)
    with wb.Batcher(GatedSink(), key="id", version="v", spool=spool, close_timeout=0.2):
        for argv in (
            ["inspect", str(spool)],
            ["verify", str(spool)],
            ["replay", str(spool), "--dry-run"],
            ["replay", str(spool), "--to-db", str(to), "--to-table", "t", "--key", "id"],
        ):
            code, out, err = run(capsys, *argv)
            assert code == 1, argv
            assert out == ""
            assert err.count("\n") == 1, err
            assert "in use by" in err
            assert str(spool) in err
            assert "Traceback" not in err


def test_a_directory_that_holds_no_spool_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing directory is not created, and a directory without a spool's lock file is
    not made into a spool (a mistyped path plants nothing): exit 1."""
    missing = tmp_path / "nope"
    code, _, err = run(capsys, "inspect", str(missing))
    assert code == 1
    assert f"no spool directory at '{missing}'" in err
    assert not missing.exists()
    plain = tmp_path / "plain"
    plain.mkdir(mode=0o700)
    (plain / "notes.txt").write_text("mine")
    for argv in (
        ["inspect", str(plain)],
        ["verify", str(plain)],
        ["replay", str(plain), "--dry-run"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 1, argv
        assert "holds no spool" in err
    assert os.listdir(plain) == ["notes.txt"]


def test_verify_exits_1_and_lists_what_was_moved_aside(
    spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flipped bit: verify counts the damaged frame, names the file it went to in
    damaged/, exits 1. The next verify finds the spool sound (exit 0) and lists the file
    from the earlier open."""
    code, out, _ = run(capsys, "verify", str(spool))
    assert code == 0
    assert "no damage found" in out
    damage_a_frame(spool)
    code, out, _ = run(capsys, "verify", str(spool))
    assert code == 1
    assert re.search(r"damaged    1 frames, \d+ bytes moved aside into damaged/", out)
    (moved,) = re.findall(r"moved aside: damaged/(\S+)", out)
    assert (spool / "damaged" / moved).exists()
    code, out, _ = run(capsys, "verify", str(spool), "--json")
    assert code == 0
    got = json.loads(out)
    assert got["ok"] is True
    assert got["damaged_frames"] == 0
    assert [e["file"] for e in got["earlier_damage"]] == [moved]


def test_replay_into_sqlite_delivers_everything(
    spool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay runs a batcher on the spool into the table: the newest version of each key
    is written, the spool is left empty, exit 0."""
    to = target(tmp_path)
    code, out, err = run(
        capsys, "replay", str(spool), "--to-db", str(to), "--to-table", "t",
        "--key", "id", "--version", "v",
    )  # fmt: skip
    assert code == 0, err
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()}
    assert counts == {"recovered": 7, "committed": 7, "coalesced": 0, "dead_lettered": 0,
                      "left": 0}  # fmt: skip
    with sqlite3.connect(to) as c:
        rows = dict(c.execute("SELECT id, v FROM t"))
    assert rows == {k: max(i for i in range(20) if i % 7 == k) for k in range(7)}
    code, out, _ = run(capsys, "inspect", str(spool), "--json")
    assert json.loads(out)["records"] == 0


def test_replay_dry_run_only_counts(
    spool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "replay", str(spool), "--dry-run", "--key", "id")
    assert code == 0
    assert "records       7" in out
    assert "distinct keys 7" in out
    code, out, _ = run(capsys, "inspect", str(spool), "--json")
    assert json.loads(out)["records"] == 7


def test_replay_usage_errors_exit_2_and_change_nothing(
    spool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No target, --version without --key, a bad table name, a table that does not fit:
    exit 2, and the spool still holds its 7 records."""
    to = str(target(tmp_path))
    cases = [
        (["replay", str(spool)], "--to-db PATH or --to-dsn DSN"),
        (["replay", str(spool), "--to-db", to, "--to-table", "t", "--version", "v"],
         "--version needs --key"),
        (["replay", str(spool), "--to-db", to, "--to-table", "a;b"], "not an allowed name"),
        (["replay", str(spool), "--to-db", to, "--to-table", "t", "--key", "nope"], "nope"),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert message in err, argv
    code, out, _ = run(capsys, "inspect", str(spool), "--json")
    assert json.loads(out)["records"] == 7


def test_replay_that_cannot_deliver_everything_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record the table refuses (NOT NULL) is dead-lettered: into --dead-letter PATH when
    given (where `writebehind dlq` finds it), and the replay exits 1."""
    spool = tmp_path / "spool"
    leave(spool, [{"id": 1, "v": 1}, {"id": 2, "v": None}], key="id")
    to = target(tmp_path)
    dead = tmp_path / "dead.db"
    code, out, _ = run(
        capsys, "replay", str(spool), "--to-db", str(to), "--to-table", "t", "--key", "id",
        "--dead-letter", str(dead),
    )  # fmt: skip
    assert code == 1
    assert "committed     1" in out
    assert "dead_lettered 1" in out
    assert main(["dlq", "list", "--db", str(dead), "--json"]) == 0
    (entry,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entry["record"] == {"id": 2, "v": None}


def test_output_is_terminal_safe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory name with terminal controls is printed escaped; --json keeps it exact."""
    spool = tmp_path / "s\x1b[2Jpool\u202e"
    leave(spool, [{"id": 1}], key="id")
    code, out, _ = run(capsys, "inspect", str(spool))
    assert code == 0
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "s\\x1b[2Jpool\\u202e" in out
    code, out, _ = run(capsys, "inspect", str(spool), "--json")
    assert json.loads(out)["path"] == str(spool)


def test_a_target_that_cannot_be_reached_does_not_show_the_password(
    spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PostgreSQL target that refuses the connection: exit 1, one line, the DSN redacted,
    and the records stay in the spool."""
    code, out, err = run(
        capsys, "replay", str(spool), "--to-dsn", "postgresql://u:sekrit-canary@127.0.0.1:1/x",
        "--to-table", "t", "--key", "id",
    )  # fmt: skip
    assert code == 1
    assert "sekrit-canary" not in out + err
    assert "cannot write to 'postgresql://u:***@127.0.0.1:1/x'" in err
    code, out, _ = run(capsys, "inspect", str(spool), "--json")
    assert json.loads(out)["records"] == 7


def test_spool_without_a_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "inspect" in err
    assert "replay" in err


@pytest.mark.server
def test_replay_into_postgres(
    spool: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--to-dsn (here env:NAME) replays into a PostgreSQL table through PostgresSink."""
    table = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_sql(f"CREATE TABLE {table} (id integer PRIMARY KEY, v integer NOT NULL)"))
    monkeypatch.setenv("WB_TEST_SPOOL_DSN", DSN)
    try:
        code, out, err = run(
            capsys, "replay", str(spool), "--to-dsn", "env:WB_TEST_SPOOL_DSN",
            "--to-table", table, "--key", "id", "--version", "v",
        )  # fmt: skip
        assert code == 0, err
        assert "committed     7" in out
        assert "left          0" in out
        assert asyncio.run(_sql(f"SELECT sum(v) FROM {table}")) == sum(range(13, 20))
    finally:
        asyncio.run(_sql(f"DROP TABLE IF EXISTS {table}"))


async def _sql(query: str) -> Any:
    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required at {DSN} and is not reachable: {exc!r}")
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()
