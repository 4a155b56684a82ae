"""``Counters``: every count one batcher keeps, in one place, changed under the intake's lock.

A new counter is added here (and in :class:`~writebehind._stats.Stats`), nowhere else.
"""

from __future__ import annotations

from types import MappingProxyType

from ._stats import Stats

__all__ = ["Counters"]


class Counters:
    """Plain integers; the :class:`~writebehind._intake.Intake` holds its lock around every
    change and around :meth:`snapshot`, so a snapshot satisfies the conservation identity."""

    __slots__ = (
        "accepted", "batches", "coalesced", "committed", "dead_letter_errors", "dead_lettered",
        "dropped_expired", "dropped_newest", "dropped_oldest", "in_flight", "in_flight_held",
        "lost", "pauses",
        "retried", "splits", "stale", "throttled", "timeouts", "write_errors",
    )  # fmt: skip
    accepted: int
    batches: int
    coalesced: int
    committed: int
    dead_letter_errors: int
    dead_lettered: int
    dropped_expired: int
    dropped_newest: int
    dropped_oldest: int
    in_flight: int
    in_flight_held: int
    lost: int
    pauses: int
    retried: int
    splits: int
    stale: int
    throttled: int
    timeouts: int
    write_errors: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def add(self, deltas: dict[str, int]) -> None:
        for name, d in deltas.items():
            if name not in self.__slots__ or name in ("in_flight", "in_flight_held"):
                raise ValueError(f"not a counter the engine may add to: {name!r}")
            setattr(self, name, getattr(self, name) + d)

    def snapshot(self, pending: int, closed: bool, bytes_held: int = 0) -> Stats:
        return Stats(
            bytes_held=bytes_held,
            accepted=self.accepted,
            committed=self.committed,
            stale=self.stale,
            coalesced=self.coalesced,
            dead_lettered=self.dead_lettered,
            dropped=self.dropped_newest + self.dropped_oldest + self.dropped_expired,
            pending=pending,
            in_flight=self.in_flight,
            batches=self.batches,
            retried=self.retried,
            splits=self.splits,
            write_errors=self.write_errors,
            timeouts=self.timeouts,
            throttled=self.throttled,
            pauses=self.pauses,
            dead_letter_errors=self.dead_letter_errors,
            lost=self.lost,
            closed=closed,
            dropped_by_reason=MappingProxyType(
                {
                    "drop_newest": self.dropped_newest,
                    "drop_oldest": self.dropped_oldest,
                    "expired": self.dropped_expired,
                }
            ),
        )
