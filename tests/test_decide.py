"""The flush decision, a pure function: every trigger and its precedence."""

from __future__ import annotations

from typing import Any

from writebehind._decide import Decision, decide


def d(**kw: Any) -> Decision:
    args: dict[str, Any] = {
        "now": 10.0,
        "pending": 5,
        "oldest_at": 9.0,
        "max_batch": 100,
        "linger": 5.0,
        "forced": 0,
        "closing": False,
        "batches_in_flight": 0,
        "max_in_flight": 1,
    }
    args.update(kw)
    return decide(**args)


def test_nothing_pending_sleeps_until_woken() -> None:
    """With nothing pending there is no deadline: sleep until an add wakes the flusher."""
    assert d(pending=0, oldest_at=None, closing=True, forced=3) == Decision(None, None)


def test_full_flight_waits_for_a_slot() -> None:
    """No batch is cut while max_in_flight batches are being written."""
    assert d(pending=500, batches_in_flight=2, max_in_flight=2) == Decision(None, None)


def test_size_trigger() -> None:
    """max_batch pending records cut a batch at once."""
    assert d(pending=100).reason == "size"
    assert d(pending=99).reason is None


def test_linger_deadline_and_trigger() -> None:
    """Before the linger deadline the flusher sleeps until it; at it, a batch is cut."""
    assert d(now=10.0, oldest_at=9.0) == Decision(None, 14.0)
    assert d(now=14.0, oldest_at=9.0).reason == "linger"
    assert d(linger=0.0).reason == "linger"


def test_flush_and_close_take_precedence() -> None:
    """close beats flush, flush beats size, and both ignore linger."""
    assert d(forced=1).reason == "flush"
    assert d(forced=1, closing=True).reason == "close"
    assert d(pending=100, forced=1).reason == "flush"
