"""``Options``: the engine's settings, validated once, frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError
from ._keys import FieldSpec
from ._overflow import WHEN_FULL

__all__ = ["Options"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What ``AsyncBatcher`` was configured with (see its docstring). Every bad value raises
    ``ConfigError`` naming the argument and what is allowed."""

    key: FieldSpec = None
    version: FieldSpec = None
    max_batch: int = 500
    linger: float = 5.0
    max_pending: int = 0  # 0: 5 x max_batch
    when_full: str = "block"
    max_in_flight: int = 1
    write_timeout: float = 30.0
    close_timeout: float = 15.0
    name: str = "default"
    event_buffer: int = 4096
    latency_target: float | None = None  # None: write_timeout / 2

    def __post_init__(self) -> None:
        for arg in ("max_batch", "max_in_flight", "event_buffer"):
            _positive_int(arg, getattr(self, arg))
        if self.max_pending == 0:
            object.__setattr__(self, "max_pending", 5 * self.max_batch)
        _positive_int("max_pending", self.max_pending)
        if self.max_pending < self.max_batch:
            raise ConfigError(
                f"max_pending: must be >= max_batch ({self.max_batch}), got {self.max_pending}"
            )
        if not (_number(self.linger) and self.linger >= 0):
            raise ConfigError(f"linger: must be a number of seconds >= 0, got {self.linger!r}")
        for arg in ("write_timeout", "close_timeout"):
            value = getattr(self, arg)
            if not (_number(value) and value > 0):
                raise ConfigError(f"{arg}: must be a number of seconds > 0, got {value!r}")
        if self.latency_target is None:
            object.__setattr__(self, "latency_target", self.write_timeout / 2)
        elif not (_number(self.latency_target) and self.latency_target > 0):
            raise ConfigError(
                f"latency_target: must be a number of seconds > 0, got {self.latency_target!r}"
            )
        if self.when_full == "spill":
            raise ConfigError(
                "when_full: 'spill' needs the durable spool, which this version does not have "
                f"yet; use one of {', '.join(WHEN_FULL)}"
            )
        if self.when_full not in WHEN_FULL:
            raise ConfigError(
                f"when_full: must be one of {', '.join(WHEN_FULL)}; got {self.when_full!r}"
            )
        if self.version is not None and self.key is None:
            raise ConfigError("version: needs a key (versions only order records with one key)")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(arg: str, value: Any) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"{arg}: must be an integer >= 1, got {value!r}")
