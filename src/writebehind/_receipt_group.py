"""``Receipts``: what ``add_many()`` returns, one receipt for a group of records.

``await group`` (or ``group.result(timeout)`` from a thread) waits until every record of the
group has its fate and returns how many had each outcome. The per-record receipts are there
when they are wanted (``group[i]``, iteration, in the order of the records), and cost
nothing more: the buffer keeps one per pending record anyway.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any, overload

from ._receipt import Outcome, Receipt

__all__ = ["Receipts"]


class Receipts(Sequence[Receipt]):
    """The receipts of the records one ``add_many()`` took, in the order of the records.

    ``await receipts`` returns a ``collections.Counter`` of outcomes (``{COMMITTED: 498,
    COALESCED: 2}``) once every record's fate is known; from a thread, ``result(timeout)``.
    ``done`` says whether that is the case already, ``outcomes()`` counts what is known now.
    """

    __slots__ = ("_receipts",)

    def __init__(self, receipts: list[Receipt]) -> None:
        self._receipts = receipts

    def __len__(self) -> int:
        return len(self._receipts)

    @overload
    def __getitem__(self, i: int) -> Receipt: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Receipt]: ...
    def __getitem__(self, i: int | slice) -> Receipt | Sequence[Receipt]:
        return self._receipts[i]

    def __iter__(self) -> Iterator[Receipt]:
        return iter(self._receipts)

    @property
    def done(self) -> bool:
        """Whether every record of the group has its outcome."""
        return all(r.outcome is not None for r in self._receipts)

    def outcomes(self) -> collections.Counter[Outcome]:
        """How many records have each outcome now (records still pending are not counted)."""
        return collections.Counter(o for r in self._receipts if (o := r.outcome) is not None)

    async def wait(self) -> collections.Counter[Outcome]:
        """Wait (on the batcher's event loop) for every record's outcome; count them."""
        for r in self._receipts:
            if r.outcome is None:
                await r.wait()
        return self.outcomes()

    def __await__(self) -> Generator[Any, None, collections.Counter[Outcome]]:
        return self.wait().__await__()

    def result(self, timeout: float | None = None) -> collections.Counter[Outcome]:
        """Block this thread until every record's outcome is known (``TimeoutError`` after
        ``timeout`` s for the whole group); count them. Not on the batcher's loop thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self._receipts:
            if r.outcome is None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                r.result(left)
        return self.outcomes()

    def __repr__(self) -> str:
        known = self.outcomes()
        shown = ", ".join(f"{o.value}={n}" for o, n in known.items())
        waiting = len(self._receipts) - sum(known.values())
        return f"<Receipts of {len(self._receipts)} records: {shown or 'none settled'}" + (
            f", {waiting} waiting>" if waiting else ">"
        )
