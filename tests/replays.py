"""Telling a replayed write from a real duplicate (issue 18), for tests that append into a
table without a key, where a duplicate shows as a second row.

A write that raised may still have committed: the connection died between the server's
COMMIT and its answer, so the outcome is unknown, the error is retriable, and the batcher
writes the same batch again. Its records are then in the table twice, every one of them.
``WriteLog`` records what each write attempt carried and whether it raised;
``unexplained_duplicates`` names every duplicate such a replay does not explain.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WriteLog", "unexplained_duplicates"]


class WriteLog:
    """Wraps a sink and records every write attempt: the id (``record[field]``, unique per
    record) of each record it carried, and whether it raised (a timeout's cancellation
    included)."""

    def __init__(self, inner: Any, field: str = "rid") -> None:
        self.inner = inner
        self.field = field
        self.tries: list[tuple[frozenset[Any], bool]] = []

    def failed(self) -> list[frozenset[Any]]:
        return [ids for ids, ok in self.tries if not ok]

    def committed(self) -> list[Any]:
        """The ids of every record a write committed, in the order of the writes."""
        return [i for ids, ok in self.tries if ok for i in ids]

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, batch: list[Any]) -> None:
        ids = frozenset(r[self.field] for r in batch)
        assert len(ids) == len(batch), f"{self.field} must be unique per record"
        try:
            await self.inner.write(batch)
        except BaseException:
            self.tries.append((ids, False))
            raise
        self.tries.append((ids, True))

    async def close(self) -> None:
        await self.inner.close()


def unexplained_duplicates(
    copies: dict[Any, int], tries: list[tuple[frozenset[Any], bool]]
) -> list[str]:
    """What in ``copies`` (id -> rows holding it, for the ids held more than once) a
    replayed write does not explain: a duplicated id needs a failed try of a batch holding
    it for each extra copy, and a failed try's batch is duplicated whole or not at all."""
    failed = [rids for rids, ok in tries if not ok]
    problems = []
    for rid, n in sorted(copies.items()):
        replays = sum(rid in rids for rids in failed)
        if n - 1 > replays:
            problems.append(f"id {rid}: {n} rows, but {replays} failed tries held it")
    duplicated = set(copies)
    for rids in failed:
        part = rids & duplicated
        if part and part != rids:
            problems.append(f"a failed batch of {len(rids)} is duplicated only in part "
                            f"({len(part)} ids, e.g. {min(part)})")  # fmt: skip
    return problems
