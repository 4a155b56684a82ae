"""Bound the buffer in bytes, and cap each batch's size: max_pending_bytes, max_batch_bytes.

Audit events vary from a few bytes to a few hundred kilobytes. max_pending=N bounds how
many are held, not how much memory they take; max_pending_bytes bounds that. A store that
caps a request (say 256 KiB) gets batches no larger: max_batch_bytes, measured here as the
length of the JSON each record becomes (size=), the figure such a cap counts.

Run: python examples/bytes_budget.py
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import writebehind as wb

sizes: list[int] = []


async def store(batch: list[dict[str, Any]]) -> None:
    sizes.append(sum(len(json.dumps(r)) for r in batch))


async def main() -> None:
    async with wb.AsyncBatcher(wb.CallableSink(store), key="id", linger=0.05,
                               max_pending_bytes=1_000_000, max_batch_bytes=256_000,
                               size=lambda r: len(json.dumps(r))) as batcher:  # fmt: skip
        for i in range(200):
            await batcher.add({"id": i, "event": "upload", "blob": "x" * (i * 97 % 40_000)})
        await batcher.flush()
        s = batcher.stats()
        print(f"committed {s.committed} in {s.batches} batches; held now {s.bytes_held} bytes")
    print(f"largest batch {max(sizes):,} bytes (cap 256,000): {max(sizes) <= 256_000}")
    try:
        wb.AsyncBatcher(wb.CallableSink(store), key="id", max_pending_bytes=10,
                        max_batch_bytes=20)  # fmt: skip
    except wb.ConfigError as exc:
        print(f"refused: {exc}")


if __name__ == "__main__":
    asyncio.run(main())
