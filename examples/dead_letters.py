"""Dead letters: keep the records a sink refuses, look at them, fix the cause, replay them.

Runs in a temporary directory with no server:

    python examples/dead_letters.py
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import writebehind as wb
from writebehind.dlq import SQLiteDeadLetter


async def main(workdir: Path) -> None:
    db = workdir / "agents.db"
    with sqlite3.connect(db) as conn:  # a NOT NULL column the bad records will violate
        conn.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, status TEXT NOT NULL, v INTEGER)")

    store = SQLiteDeadLetter(workdir / "dead_letters.db")  # no file yet: created on first use
    sink = wb.SQLiteSink(db, table="agents", key="id", version="v")
    async with wb.AsyncBatcher(sink, key="id", version="v", dead_letter=store, name="agents") as b:
        for i in range(6):
            status = None if i in (2, 4) else "up"  # two records the table refuses
            await b.add({"id": f"agent-{i}", "status": status, "v": 1})
        await b.flush()
        print("dead-lettered:", b.stats().dead_lettered)

    for entry in await store.list():
        print(f"  #{entry.id} {entry.error}: {entry.record()}  ({entry.message[:40]}...)")

    # the cause: status may now be NULL; replay puts the records where they belong
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE agents RENAME TO old")
        conn.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, status TEXT, v INTEGER)")
        conn.execute("INSERT INTO agents SELECT * FROM old")
        conn.execute("DROP TABLE old")
    sink = wb.SQLiteSink(db, table="agents", key="id", version="v")
    async with wb.AsyncBatcher(sink, key="id", version="v", dead_letter=store) as b:
        report = await store.replay(b)
    print(f"replay: committed={report.committed} deleted={report.deleted} kept={report.kept}")
    print("left in the store:", await store.count())
    with sqlite3.connect(db) as conn:
        print("rows in agents:", conn.execute("SELECT count(*) FROM agents").fetchone()[0])
    await store.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
