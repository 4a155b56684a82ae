"""A child for tests/test_spool_kill.py: adds unique ids through a batcher in spool mode into
PostgreSQL as fast as it can, and prints each id once its ``add()`` returned (durable). The
test SIGKILLs it at a random moment, or the child kills itself at a named point of the
spool's file work (``POINT:N``: the Nth ``write`` (after half of its bytes), ``fsync``,
``rename`` or ``unlink`` (trimming)). Usage: ``python -m tests.spool_kill_worker DSN TABLE
SPOOL START [POINT:N]``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import writebehind as wb
import writebehind._spooling
from writebehind.spool.testing import FaultyFileSystem


class KillAt(FaultyFileSystem):
    """SIGKILLs this process at the Nth call of one file operation."""

    def __init__(self, point: str, n: int) -> None:
        super().__init__()
        self.point, self.n, self.seen = point, n, 0

    def _due(self, op: str) -> bool:
        if op != self.point:
            return False
        self.seen += 1
        return self.seen >= self.n

    def _check(self, op: str) -> None:
        if op != "write" and self._due(op):
            os.kill(os.getpid(), signal.SIGKILL)
        super()._check(op)

    def _write(self, handle: Any, base: Any, data: bytes) -> int:
        if self._due("write"):  # a torn write: half of the bytes, then the end
            base.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._write(handle, base, data)


async def main(dsn: str, table: str, spool: str, start: int) -> None:
    sink = wb.PostgresSink(dsn, table=table, key="id", version="v")
    small = wb.Spool(spool, max_bytes=64 * 1024 * 1024, segment_bytes=256 * 1024)  # trims often
    async with wb.AsyncBatcher(sink, key="id", version="v", spool=small, linger=0.05,
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
    if len(sys.argv) > 5:
        point, count = sys.argv[5].split(":")
        writebehind._spooling._FILESYSTEM = KillAt(point, int(count))
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
