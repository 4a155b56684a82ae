"""Backoff schedule, error classification and splitting: pure functions."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import writebehind as wb
from writebehind._retry import (
    Attempts,
    Condemn,
    Retry,
    RetryPolicy,
    Split,
    backoff,
    is_retriable,
    next_step,
    schedule,
    split,
)


@given(
    base=st.floats(0.001, 5),
    factor=st.floats(1, 1000),
    attempts=st.integers(1, 30),
    seed=st.integers(0, 2**32),
)
def test_every_wait_is_within_bounds(base: float, factor: float, attempts: int, seed: int) -> None:
    """Retry n waits within [base, min(cap, base * 2**(n-1))]."""
    policy = wb.RetryPolicy(base=base, cap=base * factor, max_attempts=attempts)
    waits = schedule(policy, random.Random(seed))
    assert len(waits) == attempts - 1
    for n, wait in enumerate(waits, start=1):
        assert base <= wait <= min(policy.cap, base * 2 ** (n - 1)) + 1e-12


def test_backoff_grows_then_caps() -> None:
    """The upper bound doubles per retry until the cap."""
    policy = wb.RetryPolicy(base=1, cap=8)
    rng = random.Random(1)
    highs = [max(backoff(policy, n, rng) for _ in range(2000)) for n in range(1, 7)]
    assert highs[0] == pytest.approx(1)
    assert 1.9 < highs[1] <= 2
    assert 7.9 < highs[5] <= 8


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": 0}, "base"),
        ({"cap": 0.01}, "cap"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"deadline": -1}, "deadline"),
    ],
)
def test_bad_policy_is_a_config_error(kwargs: dict[str, float], field: str) -> None:
    """Out-of-range settings raise ConfigError naming the field."""
    with pytest.raises(wb.ConfigError, match=field):
        wb.RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_classification() -> None:
    """Sink errors say whether they are retriable; connection errors are, bugs are not."""
    assert is_retriable(wb.RetriableSinkError("x"))
    assert is_retriable(wb.WriteTimeout("x"))
    assert not is_retriable(wb.PermanentSinkError("x"))
    assert is_retriable(ConnectionResetError())
    assert is_retriable(TimeoutError())
    assert not is_retriable(ValueError())
    assert not is_retriable(KeyError("field"))


def test_split_halves() -> None:
    """A batch splits into two halves that together hold every record once."""
    assert split([1, 2, 3, 4, 5]) == ([1, 2], [3, 4, 5])
    assert split([1, 2]) == ([1], [2])


def test_a_policy_can_override_the_classification() -> None:
    """``classify`` answers first; None falls back to the sink's own mapping."""

    def classify(exc: BaseException) -> bool | None:
        if isinstance(exc, KeyError):
            return True
        if isinstance(exc, wb.RetriableSinkError):
            return False
        return None

    policy = wb.RetryPolicy(classify=classify)
    assert is_retriable(KeyError("x"), policy)
    assert not is_retriable(wb.RetriableSinkError("deadlock"), policy)
    assert is_retriable(OSError("reset"), policy)  # None: the default mapping
    assert not is_retriable(ValueError("bad"), policy)
    with pytest.raises(wb.ConfigError, match="classify"):
        wb.RetryPolicy(classify=42)  # type: ignore[arg-type]


_P = RetryPolicy(base=1, cap=1, max_attempts=3, deadline=10, max_throttle_wait=5)


@pytest.mark.parametrize(
    ("spent", "kw", "step", "after"),
    [
        # permanent: split a batch, condemn a single record; nothing is spent
        (Attempts(), {"retriable": False, "throttled": False, "size": 2}, Split(), Attempts()),
        (Attempts(), {"retriable": False, "throttled": False, "size": 1}, Condemn(), Attempts()),
        # retriable: an attempt is spent; retried while attempts remain
        (Attempts(), {"retriable": True, "throttled": False, "size": 5}, Retry(1.0),
         Attempts(1, 0.0, 0.0)),
        (Attempts(1), {"retriable": True, "throttled": False, "size": 5}, Retry(1.0),
         Attempts(2, 0.0, 0.0)),
        (Attempts(2), {"retriable": True, "throttled": False, "size": 5}, Condemn(),
         Attempts(3, 0.0, 0.0)),
        # the deadline: the next wait would pass it
        (Attempts(0, 0.0, 9.5), {"retriable": True, "throttled": False, "size": 5}, Condemn(),
         Attempts(1, 0.0, 9.5)),
        # a throttle spends throttle time, not an attempt, up to max_throttle_wait
        (Attempts(2), {"retriable": True, "throttled": True, "size": 5}, Retry(1.0),
         Attempts(2, 1.0, 0.0)),
        (Attempts(0, 4.5), {"retriable": True, "throttled": True, "size": 5}, Condemn(),
         Attempts(0, 5.5, 0.0)),
    ],
)  # fmt: skip
def test_next_step_table(spent: Attempts, kw: dict[str, Any], step: Any, after: Attempts) -> None:
    """The whole retry / split / dead-letter choice, one row per case."""
    assert next_step(_P, spent, wait=1.0, **kw) == (step, after)
