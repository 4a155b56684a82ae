"""The sync API: one ``Batcher`` shared by several threads, and receipts with ``.result()``.

Four worker threads report the progress of their jobs (0 to 100 %) into one ``Batcher``,
as a Django view, a Flask handler or a Celery task would. Updates of the same job coalesce
(the highest progress wins). Each thread then blocks on the receipt of its last update:
``receipt.result(timeout)`` returns the record's ``Outcome`` once the batch is committed.
Superseded updates resolve ``COALESCED``.

Run it with ``python examples/sync_threads.py``; it uses a temporary SQLite file and takes
about a second.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import writebehind as wb

WORKERS = 4
JOBS_PER_WORKER = 5


def worker(batcher: wb.Batcher, n: int) -> list[wb.Outcome]:
    """Report progress for this worker's jobs; return the outcome of every update."""
    receipts: list[wb.Receipt] = []
    thread = threading.current_thread().name
    for progress in range(0, 101, 10):
        for j in range(JOBS_PER_WORKER):
            job = f"job-{n}-{j}"
            receipts.append(batcher.add({"job_id": job, "worker": thread, "progress": progress}))
    # blocks this thread (never the batcher's) until the last update is committed
    print(f"{thread}: last update {receipts[-1].result(timeout=10).name}")
    return [r.result(timeout=10) for r in receipts]


def main(path: Path) -> None:
    sink = wb.SQLiteSink(path, table="jobs", key="job_id", version="progress")
    with wb.Batcher(sink, key="job_id", version="progress", linger=0.2) as batcher:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="worker") as pool:
            results = list(pool.map(worker, [batcher] * WORKERS, range(WORKERS)))
        outcomes = collections.Counter(o.name for r in results for o in r)
        print(f"outcomes: {dict(outcomes)}")
        print(batcher.stats())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "jobs.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE jobs (job_id TEXT PRIMARY KEY, worker TEXT, progress)")
        main(db)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            done = conn.execute("SELECT COUNT(*) FROM jobs WHERE progress = 100").fetchone()[0]
        print(f"jobs at 100 %: {done} of {WORKERS * JOBS_PER_WORKER}")
