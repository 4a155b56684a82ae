"""A child for tests/test_spool_kill.py: adds unique ids through a batcher in spool mode into
PostgreSQL as fast as it can, and prints each id once its ``add()`` returned (durable). The
test SIGKILLs it at a random moment. Usage: ``python -m tests.spool_kill_worker DSN TABLE
SPOOL START``."""

from __future__ import annotations

import asyncio
import sys

import writebehind as wb


async def main(dsn: str, table: str, spool: str, start: int) -> None:
    sink = wb.PostgresSink(dsn, table=table, key="id", version="v")
    async with wb.AsyncBatcher(sink, key="id", version="v", spool=spool, linger=0.05,
                               max_batch=200, max_pending=2000) as b:  # fmt: skip
        print("ready", flush=True)
        n = start
        done: list[str] = []

        async def producer(k: int) -> None:
            nonlocal n
            while True:
                i = n
                n += 1
                await b.add({"id": i, "v": 1, "note": f"p{k}"})
                done.append(str(i))
                if len(done) >= 50:
                    sys.stdout.write("\n".join(done) + "\n")
                    sys.stdout.flush()
                    done.clear()

        await asyncio.gather(*(producer(k) for k in range(16)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
