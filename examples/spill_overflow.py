"""``when_full="spill"``: memory first, a durable spool for what does not fit.

A sink that is down for a while (``writebehind.testing.GatedSink``, opened after a moment)
and a buffer of 20 records: the first 20 wait in memory, the next 80 are appended to the
spool (each ``add()`` returns once its record is fsynced) and wait there, in order. Then
the sink comes back and every record is written once, oldest first.

Run it with ``python examples/spill_overflow.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import writebehind as wb
from writebehind.testing import GatedSink


async def main() -> None:
    sink = GatedSink()  # holds every write until open()
    with tempfile.TemporaryDirectory() as tmp:
        async with wb.AsyncBatcher(
            sink, key="id", spool=Path(tmp) / "spool", when_full="spill",
            max_batch=10, max_pending=20, linger=0.01,
        ) as batcher:  # fmt: skip
            receipts = [await batcher.add({"id": i, "status": "ok"}) for i in range(100)]
            s = batcher.stats()
            print(f"accepted {s.accepted}, waiting {s.pending + s.in_flight}, "
                  f"in the spool {s.spooled}")  # fmt: skip
            sink.open()  # the datastore is back
            await batcher.flush()
            s = batcher.stats()
            print(f"committed {s.committed}, pending {s.pending}, lost {s.lost}")
            written = [r["id"] for batch in sink.batches for r in batch]
            print("written once each, in order:", written == list(range(100)))
            print("outcomes:", {r.outcome for r in receipts})


if __name__ == "__main__":
    asyncio.run(main())
