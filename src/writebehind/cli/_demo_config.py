"""``DemoConfig``: the demo's settings (the command line's flags), apart from the demo so
the report can name its type without importing the demo."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TABLE", "DemoConfig"]

TABLE = "agent_heartbeats"
_AUTO_BATCH_PER_AGENT = 2  # max_batch "auto": above the fleet, so only the linger cuts
_PENDING_PER_BATCH = 4  # max_pending: room for a pending window and batches in flight


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    """The demo's settings; the command line's flags."""

    agents: int = 10_000
    duration: float = 5.0
    interval: float = 0.5
    db: str | None = None
    dsn: str | None = None
    table: str = TABLE
    reset: bool = False
    max_batch: int | None = None
    """None: "auto", twice the agents (see :attr:`batch_size`)."""
    linger: float = 2.0
    naive: bool = True
    plain: bool = False

    @property
    def rate(self) -> float:
        """Heartbeats offered per second."""
        return self.agents / self.interval

    @property
    def total(self) -> int:
        """Heartbeats in the whole run (at least one)."""
        return max(1, round(self.duration * self.rate))

    @property
    def batch_size(self) -> int:
        """``max_batch``; "auto" is above the agents: pending records (at most one per
        agent) never reach it, so the linger cuts every batch and each batch holds every
        agent once."""
        if self.max_batch is not None:
            return self.max_batch
        return _AUTO_BATCH_PER_AGENT * self.agents

    @property
    def max_pending(self) -> int:
        """Room for a full pending window plus the batches in flight: the producer never
        waits for it."""
        return _PENDING_PER_BATCH * self.batch_size

    def expected_coalescing(self) -> tuple[float, str]:
        """Heartbeats per row written this run should reach, and why."""
        if self.batch_size <= self.agents:
            return 1.0, (
                f"max_batch {self.batch_size:,} <= {self.agents:,} agents: each batch is cut "
                "before any agent heartbeats again"
            )
        if self.linger <= 0:
            return 1.0, "linger 0: each heartbeat is cut into a batch at once"
        per_agent = self.total / self.agents
        windows = max(1, math.ceil(self.duration / self.linger - 1e-9))
        ratio = max(1.0, per_agent / windows)
        return ratio, (
            f"{per_agent:,.3g} heartbeats per agent / {windows} linger "
            f"window{'s' if windows > 1 else ''} in {self.duration:g} s; a full window holds "
            f"linger / interval = {self.linger:g} / {self.interval:g} = "
            f"{self.linger / self.interval:.3g}"
        )
