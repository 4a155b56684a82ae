"""The overflow policies as a pure decision: what a full buffer does with a record that
needs a new slot.

``when_full`` is ``block``/``raise`` (refuse with ``BufferFull``: the caller keeps the
record), ``drop_newest`` (accept and drop it), ``drop_oldest`` (drop the oldest pending
record to make room) or ``direct`` (write it alone, now, beside the batches; at most
``max_pending`` records in direct flight, past which it refuses like ``block``).
:func:`overflow_action` only chooses; :class:`~writebehind._intake.Intake`, which owns the
records and counters, carries the choice out.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["WHEN_FULL", "Action", "WhenFull", "overflow_action"]

WhenFull = Literal["block", "raise", "drop_newest", "drop_oldest", "direct", "spill"]
WHEN_FULL: tuple[WhenFull, ...] = (
    "block", "raise", "drop_newest", "drop_oldest", "direct", "spill",
)  # fmt: skip

Action = Literal["refuse", "drop_newest", "drop_oldest", "direct"]


def overflow_action(
    policy: str, *, has_pending: bool, direct_in_flight: int, max_pending: int
) -> Action:
    """What to do with a record that found the buffer full.

    ``refuse``: raise ``BufferFull`` (the record is not accepted). ``drop_newest``: accept
    and drop it. ``drop_oldest``: drop the oldest pending record and take this one.
    ``direct``: write it alone, now. (``spill`` sends such a record to the spool before
    it reaches the buffer, see ``_spooling``; here it refuses, as ``block`` does.)
    """
    if policy == "drop_oldest":
        return "drop_oldest" if has_pending else "drop_newest"
    if policy == "drop_newest":
        return "drop_newest"
    if policy == "direct":
        return "direct" if direct_in_flight < max_pending else "refuse"
    return "refuse"
