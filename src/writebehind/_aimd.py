"""Adaptive concurrency: how many batches one batcher writes at once (AIMD).

``max_in_flight`` is the ceiling. The limit starts there, halves (never below 1) when the
sink throttles, times out, or answers slower than ``latency_target``, and grows back by
one batch per ``limit`` successful writes, the additive increase / multiplicative decrease
of TCP congestion control. One decrease per congestion episode: a write that began before
the last decrease does not halve the limit again (its slowness was already answered).

Pure state and arithmetic; the caller supplies the times.
"""

from __future__ import annotations

__all__ = ["AdaptiveConcurrency"]


class AdaptiveConcurrency:
    """The AIMD limit on batches in flight."""

    __slots__ = ("ceiling", "decreased_at", "decreases", "latency_target", "limit")

    def __init__(self, ceiling: int, latency_target: float | None) -> None:
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.latency_target = latency_target
        self.decreased_at = float("-inf")
        self.decreases = 0

    @property
    def current(self) -> int:
        """Batches that may be in flight now: at least 1, at most ``ceiling``."""
        return max(1, int(self.limit))

    def succeeded(self, began: float, now: float) -> None:
        """A write that began at ``began`` committed at ``now``."""
        target = self.latency_target
        if target is not None and now - began > target:
            self.congested(began, now)
        elif self.limit < self.ceiling:
            self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)

    def congested(self, began: float, now: float) -> bool:
        """The sink throttled, timed out or was too slow, at ``now``, for a write that began
        at ``began``. True if the limit was halved (False: this episode was answered)."""
        if began < self.decreased_at or self.limit <= 1.0:
            return False
        self.limit = max(1.0, self.limit / 2.0)
        self.decreased_at = now
        self.decreases += 1
        return True
