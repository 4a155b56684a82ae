"""Your own instrument (a hook around every sink write) and your own retry rule.

Run: python examples/instruments_and_retry_rules.py

An instrument is any object whose ``write(attempt)`` returns a context manager; the batcher
enters it around each sink write attempt (never per record) and fills in the attempt's
outcome, error and duration before it exits. Here one keeps a tally of outcomes and the
slowest write. ``RetryPolicy(classify=...)`` overrides which errors are worth retrying:
this sink raises ``LookupError`` for a momentary miss, which by default would count as a
permanent error (split and dead-lettered); the rule says "retry it".
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import writebehind as wb
from writebehind.testing import MemorySink


class Tally:
    """Counts write attempts by outcome and remembers the slowest."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.slowest = 0.0

    @contextmanager
    def write(self, attempt: wb.WriteAttempt) -> Iterator[None]:
        yield  # the sink writes here
        self.outcomes[attempt.outcome] += 1
        self.slowest = max(self.slowest, attempt.duration)


class SometimesMissing(MemorySink):
    """Fails the first two writes with a LookupError (say, a cache not warmed yet)."""

    def __init__(self) -> None:
        super().__init__()
        self.misses = 2

    async def write(self, batch: list[object]) -> None:
        if self.misses:
            self.misses -= 1
            raise LookupError("not warmed up yet")
        await super().write(batch)


def retry_lookups(error: BaseException) -> bool | None:
    """True: retry; False: permanent; None: keep the sink's own answer."""
    return True if isinstance(error, LookupError) else None


async def main() -> None:
    tally = Tally()
    policy = wb.RetryPolicy(base=0.01, cap=0.05, classify=retry_lookups)
    sink = SometimesMissing()
    async with wb.AsyncBatcher(
        sink, max_batch=100, retry=policy, instruments=[tally], dead_letter=None
    ) as batcher:
        for n in range(250):
            batcher.add_nowait({"n": n})
        await batcher.flush()
        stats = batcher.stats()
    print(f"write attempts by outcome: {dict(tally.outcomes)}")
    print(f"slowest write: {tally.slowest * 1000:.2f} ms")
    print(
        f"committed {stats.committed}, retried {stats.retried}, dead-lettered "
        f"{stats.dead_lettered}, lost {stats.lost}"
    )


if __name__ == "__main__":
    asyncio.run(main())
