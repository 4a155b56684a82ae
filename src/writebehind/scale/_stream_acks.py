"""The acknowledging half of :func:`writebehind.consume_stream`: which entries' records
are settled, and the batched ``XACK`` (and ``XDEL``) of those that may go.

An entry may be acknowledged once its record's receipt resolves ``COMMITTED``,
``COALESCED``, ``DEAD_LETTERED`` or ``DROPPED``. A superseded receipt takes its successor's
outcome (``Receipt.outcome`` follows the chain), and the successor carries its data, so its
entry goes when the successor's fate is known. ``LOST`` and ``SPOOLED`` records were not
written: their entries stay pending, for another consumer to claim.

Receipts mostly resolve in the order their records were added, so the tracker waits on the
oldest one and then takes every resolved receipt from the front; a batch that is retried
for long (its receipts at the front) does not hold back the others for more than
``_SWEEP`` seconds, when every tracked receipt is looked at.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from .._receipt import Outcome, Receipt

__all__ = ["Acks"]

log = logging.getLogger("writebehind")

_SWEEP = 0.25  # seconds between looks at every tracked receipt
# a tuple, COMMITTED first: `in` finds it by identity, where a set hashes the enum in Python
_ACKED = (
    Outcome.COMMITTED,
    Outcome.STALE,
    Outcome.COALESCED,
    Outcome.DEAD_LETTERED,
    Outcome.DROPPED,
)


class Acks:
    """Entries added to the batcher, in order, until their receipts resolve; the ids to
    acknowledge, sent in one command per round."""

    def __init__(self, stream: str, group: str, *, delete: bool) -> None:
        self.stream, self.group, self.delete = stream, group, delete
        self.tracked: deque[tuple[bytes, Receipt]] = deque()
        self.ids: set[bytes] = set()  # the ids tracked (a claimed entry we hold is skipped)
        self.to_ack: list[bytes] = []
        self.acked = 0
        self.left_pending = 0  # LOST or SPOOLED: not written, left for another consumer
        self.changed = asyncio.Event()  # something was tracked, or resolved
        self.progress = asyncio.Event()  # entries were taken off the tracked list
        self._last_sweep = time.monotonic()

    def __len__(self) -> int:
        return len(self.tracked)

    def track_many(self, pairs: list[tuple[bytes, Receipt]]) -> None:
        """Track each (entry id, receipt) added to the batcher, in order."""
        if pairs:
            self.tracked.extend(pairs)
            self.ids.update([entry_id for entry_id, _ in pairs])
            self.changed.set()

    def ack_now(self, entry_id: bytes) -> None:
        """An entry settled without a receipt (dead-lettered as raw data, deleted)."""
        self.to_ack.append(entry_id)
        self.changed.set()

    def _settle(self, entry_id: bytes, outcome: Outcome) -> None:
        self.ids.discard(entry_id)
        if outcome in _ACKED:
            self.to_ack.append(entry_id)
        else:
            self.left_pending += 1

    def collect(self) -> int:
        """Take resolved receipts from the front, and from everywhere every ``_SWEEP`` s;
        how many were taken."""
        taken = 0
        tracked, ids, to_ack = self.tracked, self.ids, self.to_ack
        while tracked:  # _settle inlined: this runs once per entry
            entry_id, receipt = tracked[0]
            outcome = receipt.outcome
            if outcome is None:
                break
            tracked.popleft()
            ids.discard(entry_id)
            if outcome in _ACKED:
                to_ack.append(entry_id)
            else:
                self.left_pending += 1
            taken += 1
        now = time.monotonic()
        if tracked and now - self._last_sweep >= _SWEEP:
            self._last_sweep = now
            keep: deque[tuple[bytes, Receipt]] = deque()
            for entry_id, receipt in tracked:
                outcome = receipt.outcome
                if outcome is None:
                    keep.append((entry_id, receipt))
                else:
                    self._settle(entry_id, outcome)
                    taken += 1
            self.tracked = keep
        return taken

    async def wait_progress(self, timeout: float) -> None:
        """Until the acknowledging task takes entries off the tracked list (room for more),
        at most ``timeout`` s; always yields to the loop, so that task runs."""
        self.progress.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.progress.wait()
        except TimeoutError:
            pass

    async def wait_front(self, timeout: float) -> None:
        """Until the oldest tracked receipt resolves (or something is tracked), at most
        ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                if self.tracked:
                    await self.tracked[0][1].wait()
                else:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            pass
        except Exception:  # the receipt's own failure: collect() looks again
            pass

    async def send(self, client: Any) -> bool:
        """``XACK`` (and ``XDEL``) the ids collected, in one round trip; False if Redis did
        not take them (they are kept for the next try)."""
        if not self.to_ack:
            return True
        ids = list(self.to_ack)  # more may be collected while this round trip runs
        try:
            if not self.delete:  # one command: no MULTI/EXEC around it
                await client.xack(self.stream, self.group, *ids)
            else:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.xack(self.stream, self.group, *ids)
                    pipe.xdel(self.stream, *ids)
                    await pipe.execute()
        except Exception as exc:  # Redis down or restarted: tried again next round
            log.debug("consume_stream: XACK of %d entries failed: %s", len(ids), type(exc))
            return False
        del self.to_ack[: len(ids)]
        self.acked += len(ids)
        return True

    async def run(self, client: Any, stop: asyncio.Event) -> None:
        """Collect and acknowledge until ``stop`` is set and nothing is tracked or left to
        send (the caller bounds the wait for a Redis that does not answer)."""
        failures = 0
        while True:
            if self.collect():
                self.progress.set()
            sent = await self.send(client)
            failures = 0 if sent else failures + 1
            if stop.is_set() and not self.tracked and not self.to_ack:
                return
            if not sent:
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))
            elif not self.tracked or self.tracked[0][1].outcome is None:
                await self.wait_front(_SWEEP)
