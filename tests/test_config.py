"""Bad configuration raises ConfigError naming the argument and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

import writebehind as wb
from writebehind.testing import MemorySink


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": 2.5}, "max_batch"),
        ({"max_batch": True}, "max_batch"),
        ({"max_pending": 10, "max_batch": 20}, "max_pending"),
        ({"linger": -1}, "linger"),
        ({"linger": "5"}, "linger"),
        ({"when_full": "spill_everywhere"}, "when_full"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"write_timeout": 0}, "write_timeout"),
        ({"close_timeout": -1}, "close_timeout"),
        ({"version": "v"}, "version"),
        ({"key": ""}, "key"),
        ({"key": ("a", 3)}, "key"),
        ({"key": 42}, "key"),
        ({"max_pending": 0}, "max_pending"),
        ({"linger": float("nan")}, "linger"),
        ({"max_bach": 5}, "did you mean 'max_batch'"),
        ({"retry": "fast"}, "retry"),
        ({"name": ""}, "name"),
    ],
)
@pytest.mark.parametrize("cls", [wb.AsyncBatcher, wb.Batcher])
def test_bad_argument(cls: Any, kwargs: dict[str, Any], name: str) -> None:
    """Each bad value is refused at construction with the argument's name."""
    with pytest.raises(wb.ConfigError, match=name):
        cls(MemorySink(), **kwargs)


def test_sink_must_have_write() -> None:
    """An object without a write method is not a sink."""
    with pytest.raises(wb.ConfigError, match="write"):
        wb.AsyncBatcher(object())


def test_default_max_pending_is_five_batches() -> None:
    """max_pending defaults to 5 x max_batch (Coder's channel multiplier)."""
    b = wb.AsyncBatcher(MemorySink(), max_batch=40)
    assert b._intake.max_pending == 200


def test_not_started_batcher_refuses_records() -> None:
    """Adding to a batcher that was never started says how to start it."""
    b = wb.AsyncBatcher(MemorySink())
    with pytest.raises(wb.WriteBehindError, match="not started"):
        b.add_nowait({"x": 1})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"base": "1"}, "RetryPolicy.base"),
        ({"base": float("nan")}, "RetryPolicy.base"),
        ({"cap": "10"}, "RetryPolicy.cap"),
        ({"max_attempts": True}, "RetryPolicy.max_attempts"),
        ({"max_throttle_wait": None}, "RetryPolicy.max_throttle_wait"),
        ({"deadline": "soon"}, "RetryPolicy.deadline"),
    ],
)
def test_bad_retry_policy(kwargs: dict[str, Any], name: str) -> None:
    """RetryPolicy uses the same checks: a ConfigError naming the field, never a TypeError."""
    with pytest.raises(wb.ConfigError, match=name):
        wb.RetryPolicy(**kwargs)


def test_options_are_declared_once() -> None:
    """The TypedDict both APIs take and the Options that validate them name the same
    options (a new option added to one only fails here)."""
    from dataclasses import fields

    from writebehind._config import BatcherOptions, Options

    assert set(BatcherOptions.__annotations__) == {f.name for f in fields(Options)}


def test_max_pending_defaults_to_five_batches() -> None:
    """max_pending=None (the default) is 5 x max_batch; 0 is refused, not a sentinel."""
    assert wb.AsyncBatcher(MemorySink(), max_batch=7).options.max_pending == 35
