"""The cost of reporting stale records (``report_stale=``, issue 15), beside the plain write.

The same heartbeats (``agents`` agents, ``BEATS`` heartbeats each, round-robin, so nothing
coalesces) go through ``AsyncBatcher`` into a fresh table, once with the sink's
``report_stale=False`` and once with ``True``, the two runs of each pair one after the
other (which goes first alternating), ``RUNS`` pairs per configuration, timed from the first
``add()`` to ``close()`` returning. The cost is the median of the pairs' ratios (on / off):
two runs a second apart see the same machine, where the medians of the rates alone move
with whatever else the (shared) machine is doing. Two workloads:

- **fresh**: the table starts empty; every record changes its row (nothing is stale);
- **10% stale**: the table starts with a tenth of the agents at a version ten years
  ahead, so every record of theirs is skipped by the version condition (and reported).

Configurations: ``SQLiteSink`` (``synchronous=FULL``, ``max_batch=500``);
``PostgresSink`` with asyncpg (``unnest``, ``max_batch=500``, 2 in flight on 2
connections); and with ``driver="psycopg"`` (binary COPY and one merge, ``max_batch=5000``,
2 in flight). With reporting on, the stale count must be exactly the seeded agents'
records, and 0 with it off; the table must hold every other agent at its newest version
and the seeded ones untouched, or the run fails.

For SQLite, the ways to learn which rows were skipped are also timed on their own, with
``sqlite3`` and no batcher (batches of 500, each in ``BEGIN IMMEDIATE`` ... ``COMMIT``):
plain ``executemany``; ``executemany`` whose ``rowcount`` is compared with the batch, the
rows looked up only when it falls short, by one ``VALUES`` query per 500 rows (what the
sink does) or one query per row; one ``execute`` with ``RETURNING`` per row; one multi-row
``VALUES ... RETURNING`` statement per 500 rows (the keys returned; mapping them back to
the batch, which the sink would have to do and check, not timed).

Run alone: ``python -m benchmarks.stale_report [--quick]``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import operator
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import writebehind as wb
from writebehind.sinks._stale import sqlite_stale

from . import postgres_e2e as pge
from . import sqlite_e2e as sqe
from ._common import BASE_TIME, Section, Table, check, fmt_int, heartbeats

__all__ = ["measure"]

BEATS = 5
SEED_SHARE = 10  # one agent in SEED_SHARE starts ten years ahead: its records are stale
RUNS = 9
FUTURE_PG = BASE_TIME + dt.timedelta(days=3650)
FUTURE_SQ = "2034-01-01T00:00:00.000000+00:00"
Run = Callable[[bool, bool], Awaitable[tuple[float, wb.Stats]]]


async def _through(sink: Any, recs: list[dict[str, Any]], **options: Any) -> tuple[float, wb.Stats]:
    # at most two batches held: an agent's next heartbeat (``agents`` records later) never
    # finds its last one pending, so nothing coalesces and every record reaches the sink
    held = 2 * options["max_batch"]
    batcher = wb.AsyncBatcher(
        sink, key="id", version="updated_at", linger=0.1, max_pending=held, **options
    )
    await batcher.start()
    add = batcher.add
    t0 = time.perf_counter()
    for r in recs:
        await add(r)
    report = await batcher.close()
    elapsed = time.perf_counter() - t0
    s = report.stats
    check(report.lost == 0 and s.dead_lettered == 0 and s.accepted == len(recs), f"{s}")
    return elapsed, s


# -- SQLite ------------------------------------------------------------------------------------


def _sqlite_run(tmp: Path, agents: int) -> tuple[Run, int]:
    recs, newest = heartbeats(agents, BEATS, interval=30.0)
    seeded = sorted(newest)[::SEED_SHARE]
    n = 0

    async def run(report: bool, stale: bool) -> tuple[float, wb.Stats]:
        nonlocal n
        n += 1
        path = tmp / f"stale{n}.db"
        sqe.create_table(path)
        if stale:
            _seed_sqlite(path, seeded)
        sink = wb.SQLiteSink(
            path, table=sqe.TABLE, key="id", version="updated_at", report_stale=report
        )
        elapsed, s = await _through(sink, recs, max_batch=500)
        _verify_sqlite(path, newest, set(seeded) if stale else set())
        path.unlink()
        return elapsed, s

    return run, len(seeded) * BEATS


def _seed_sqlite(path: Path, ids: list[str]) -> None:
    conn = sqlite3.connect(path)
    row = ("2024-01-01", "2024-01-01", "r", None, FUTURE_SQ)
    conn.executemany(f"INSERT INTO {sqe.TABLE} VALUES (?, ?, ?, ?, ?, ?)", [(i, *row) for i in ids])
    conn.commit()
    conn.close()


def _verify_sqlite(path: Path, newest: dict[str, str], seeded: set[str]) -> None:
    conn = sqlite3.connect(path)
    rows = dict(conn.execute(f"SELECT id, updated_at FROM {sqe.TABLE}").fetchall())
    conn.close()
    want = {k: (FUTURE_SQ if k in seeded else v) for k, v in newest.items()}
    check(rows == want, "SQLite: the table does not hold the newest version of every agent")


def _sqlite_ways(tmp: Path, agents: int) -> dict[str, float]:
    """rows/s of each way to learn the skipped rows, on the 10%-stale table."""
    recs, newest = heartbeats(agents, BEATS, interval=30.0)
    seeded = sorted(newest)[::SEED_SHARE]
    get = operator.itemgetter(*sqe.COLUMNS)
    rows = [get(r) for r in recs]
    plain = sqe._statement()
    ret = plain + " RETURNING id"
    check_sql = (
        f"SELECT 1 FROM {sqe.TABLE} WHERE id = ? AND ({sqe.TABLE}.updated_at IS NULL "
        f"OR ? >= {sqe.TABLE}.updated_at) IS NOT TRUE"
    )

    def executemany(conn: sqlite3.Connection, batch: list[Any]) -> int:
        conn.executemany(plain, batch)
        return 0

    sink = types.SimpleNamespace(table=sqe.TABLE, key=("id",), version="updated_at")

    def rowcount(conn: sqlite3.Connection, batch: list[Any]) -> int:
        if conn.executemany(plain, batch).rowcount == len(batch):
            return 0
        return len(sqlite_stale(conn, sqe.COLUMNS, batch, sink))

    def one_by_one(conn: sqlite3.Connection, batch: list[Any]) -> int:
        if conn.executemany(plain, batch).rowcount == len(batch):
            return 0
        return sum(1 for r in batch if conn.execute(check_sql, (r[0], r[5])).fetchone())

    def per_row(conn: sqlite3.Connection, batch: list[Any]) -> int:
        return sum(1 for r in batch if not conn.execute(ret, r).fetchall())

    head, _, conflict = plain.partition(" ON CONFLICT ")
    base = head.rpartition(" VALUES ")[0]
    marks = "(" + ", ".join("?" for _ in sqe.COLUMNS) + ")"

    def values(conn: sqlite3.Connection, batch: list[Any]) -> int:
        """Written rows' keys returned (mapping them back to the batch is not timed)."""
        sql = f"{base} VALUES {', '.join([marks] * len(batch))} ON CONFLICT {conflict}"
        back = conn.execute(sql + " RETURNING id", [v for r in batch for v in r]).fetchall()
        return len(batch) - len(back)

    out: dict[str, float] = {}
    ways = {
        "executemany (no report)": executemany,
        "executemany; when rowcount < rows, one VALUES lookup per 500 (the sink)": rowcount,
        "executemany; when rowcount < rows, one lookup per row": one_by_one,
        "execute ... RETURNING per row": per_row,
        "multi-row VALUES ... RETURNING per 500 rows": values,
    }
    for name, way in ways.items():
        path = tmp / "ways.db"
        sqe.create_table(path)
        _seed_sqlite(path, seeded)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
        t0 = time.perf_counter()
        found = 0
        for i in range(0, len(rows), 500):
            conn.execute("BEGIN IMMEDIATE")
            found += way(conn, rows[i : i + 500])
            conn.execute("COMMIT")
        out[name] = len(rows) / (time.perf_counter() - t0)
        conn.close()
        path.unlink()
        if way is not executemany:
            check(found == len(seeded) * BEATS, f"{name}: found {found} stale rows")
    return out


# -- PostgreSQL --------------------------------------------------------------------------------


def _pg_run(admin: Any, table: str, agents: int, driver: str) -> tuple[Run, int]:
    recs, newest = pge.records(agents, BEATS)
    seeded = sorted({r["id"] for r in recs[:agents]}, key=str)[::SEED_SHARE]
    batch = 5000 if driver == "psycopg" else 500

    async def run(report: bool, stale: bool) -> tuple[float, wb.Stats]:
        await admin.execute(f"TRUNCATE {table}")
        if stale:
            await admin.execute(
                f"INSERT INTO {table} SELECT id, $2, $2, id, NULL, $2 FROM unnest($1::uuid[]) id",
                seeded,
                FUTURE_PG,
            )
        await admin.execute(f"VACUUM ANALYZE {table}")
        sink = wb.PostgresSink(
            pge.DSN, table=table, key="id", version="updated_at", driver=driver,
            pool_size=2, report_stale=report,
        )  # fmt: skip
        elapsed, s = await _through(sink, recs, max_batch=batch, max_in_flight=2)
        got = dict(await admin.fetch(f"SELECT id::text, updated_at FROM {table}"))
        marked = {str(i) for i in seeded} if stale else set()
        want = {k: (FUTURE_PG if k in marked else v) for k, v in newest.items()}
        check(got == want, f"PostgreSQL ({driver}): the table lacks some newest versions")
        return elapsed, s

    return run, len(seeded) * BEATS


# -- the measurement ---------------------------------------------------------------------------


async def _pairs(run: Run, stale_records: int, n: int, runs: int) -> dict[str, Any]:
    """``runs`` pairs (off, on) for each workload: the rates, and the stale counts checked."""
    out: dict[str, Any] = {}
    for stale in (False, True):
        rates: dict[bool, list[float]] = {False: [], True: []}  # [i]: pair i's rates
        for i in range(runs):
            for report in (False, True) if i % 2 == 0 else (True, False):
                elapsed, s = await run(report, stale)
                expected = stale_records if (stale and report) else 0
                check(s.coalesced == 0, f"nothing should coalesce here: {s}")
                check(s.stale == expected, f"stale {s.stale}, expected {expected}")
                rates[report].append(n / elapsed)
        out["10% stale" if stale else "fresh"] = rates
    return out


async def _measure(quick: bool) -> tuple[dict[str, Any], dict[str, float]]:
    agents = 12_000 if quick else 20_000
    runs = 1 if quick else RUNS
    n = agents * BEATS
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wb-stale-") as tmp:
        run, stale = _sqlite_run(Path(tmp), agents)
        results["SQLiteSink"] = await _pairs(run, stale, n, runs)
        ways = _sqlite_ways(Path(tmp), agents)
    admin = await pge._connect()
    table = "wb_bench_stale"
    try:
        await admin.execute(f"DROP TABLE IF EXISTS {table}")
        await admin.execute(f"CREATE TABLE {table} {pge._DDL}")
        for driver in ("asyncpg", "psycopg"):
            run, stale = _pg_run(admin, table, agents, driver)
            results[f"PostgresSink ({driver})"] = await _pairs(run, stale, n, runs)
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {table}")
        await admin.close()
    return results, ways


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def measure(quick: bool) -> Section:
    load = _load()
    results, ways = asyncio.run(_measure(quick))
    print(f"load average (1, 5, 15 min) before: {load}; after: {_load()}", file=sys.stderr)
    runs = 1 if quick else RUNS
    table = Table(
        f"rows/s through AsyncBatcher, report_stale off and on ({runs} pair"
        f"{'s' if runs > 1 else ''} of runs each; medians)",
        ["sink", "workload", "off", "on", "on / off (median of pairs)", "pairs' range"],
    )
    for sink, workloads in results.items():
        for workload, rates in workloads.items():
            off, on = statistics.median(rates[False]), statistics.median(rates[True])
            ratios = [b / a for a, b in zip(rates[False], rates[True], strict=True)]
            table.rows.append(
                [
                    sink, workload, fmt_int(off), fmt_int(on),
                    f"{statistics.median(ratios):.1%}",
                    f"{min(ratios):.0%}-{max(ratios):.0%}",
                ]
            )  # fmt: skip
    plain = ways["executemany (no report)"]
    alt = Table(
        "SQLite: ways to learn the skipped rows, sqlite3 alone, 10% stale (one run each)",
        ["way", "rows/s", "vs executemany"],
        [[name, fmt_int(rate), f"{rate / plain:.1%}"] for name, rate in ways.items()],
    )
    return Section(
        key="stale_report",
        title="The cost of reporting stale records",
        method=(__doc__ or "").split("\n\n", 1)[1].rsplit("\n\nRun alone", 1)[0],
        tables=[table, alt],
        data={"rates": results, "sqlite_ways": ways, "load": _load()},
    )


if __name__ == "__main__":
    from ._report import text

    print(text(measure("--quick" in sys.argv)))
