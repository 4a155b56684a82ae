"""Retry policy, backoff schedule, error classification and batch splitting: pure functions.

Backoff is exponential with full jitter, bounded below by ``base``: the wait before retry
``n`` (1-based) is uniform in ``[base, min(cap, base * 2**(n-1)) ]``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ._errors import ConfigError, SinkError

__all__ = [
    "Attempts",
    "Condemn",
    "Retry",
    "RetryPolicy",
    "Split",
    "Step",
    "backoff",
    "check_number",
    "is_retriable",
    "next_step",
    "retry_after",
    "schedule",
    "split",
]

T = TypeVar("T")

log = logging.getLogger("writebehind")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a failed write is retried.

    ``max_attempts`` counts every try that failed with an error, the first included (1 means
    never retry). A throttled try (the sink said "retry after N s") does not count: the batch
    waits as long as the sink asks, up to ``max_throttle_wait`` seconds in all. ``deadline``
    (seconds, optional) bounds the total time spent on one batch, throttles included.
    Past any of these bounds the batch's records are dead-lettered.

    ``classify`` overrides which errors are retriable: called with each error a write
    raised, it returns True (retry), False (permanent: split and dead-letter) or None (use
    the sink's own mapping, see :func:`is_retriable`).
    """

    base: float = 0.1
    cap: float = 10.0
    max_attempts: int = 6
    deadline: float | None = None
    max_throttle_wait: float = 300.0
    classify: Callable[[BaseException], bool | None] | None = None

    def __post_init__(self) -> None:
        check_number("RetryPolicy.base", self.base, minimum=0, inclusive=False)
        check_number("RetryPolicy.cap", self.cap, minimum=self.base)
        if not (
            isinstance(self.max_attempts, int)
            and not isinstance(self.max_attempts, bool)
            and self.max_attempts >= 1
        ):
            raise ConfigError(
                f"RetryPolicy.max_attempts: must be an integer >= 1, got {self.max_attempts!r}"
            )
        check_number("RetryPolicy.max_throttle_wait", self.max_throttle_wait, minimum=0)
        if self.classify is not None and not callable(self.classify):
            raise ConfigError(
                f"RetryPolicy.classify: must be callable or None, got {self.classify!r}"
            )
        if self.deadline is not None:
            check_number("RetryPolicy.deadline", self.deadline, minimum=0, inclusive=False)


def check_number(
    name: str, value: object, *, minimum: float, inclusive: bool = True, finite: bool = False
) -> None:
    """``ConfigError`` unless ``value`` is a real number (not a bool, not NaN; finite when
    ``finite``) above ``minimum`` (or equal to it, when ``inclusive``). The one check of
    every numeric option."""
    try:  # an int beyond any float (10**400) is no number of seconds either
        number = float(value) if isinstance(value, int | float) else math.nan
    except OverflowError:
        number = math.nan
    ok = (
        not isinstance(value, bool)
        and not math.isnan(number)
        and (number >= minimum if inclusive else number > minimum)
        and (not finite or math.isfinite(number))
    )
    if not ok:
        relation = ">=" if inclusive else ">"
        what = "a finite number" if finite else "a number"
        raise ConfigError(f"{name}: must be {what} {relation} {minimum:g}, got {value!r}")


def backoff(policy: RetryPolicy, retry: int, rng: random.Random | None = None) -> float:
    """The wait before retry number ``retry`` (1-based), with full jitter above ``base``."""
    high = min(policy.cap, policy.base * 2.0 ** (retry - 1))
    return (rng or random).uniform(policy.base, high)


def schedule(policy: RetryPolicy, rng: random.Random | None = None) -> list[float]:
    """Every wait the policy would make for one batch, in order (``max_attempts - 1`` of them)."""
    return [backoff(policy, n, rng) for n in range(1, policy.max_attempts)]


def is_retriable(exc: BaseException, policy: RetryPolicy | None = None) -> bool:
    """Whether writing the same batch again may succeed.

    The policy's ``classify`` decides first, if it has one and gives an answer. A
    ``SinkError`` says so itself. Otherwise connection and timeout errors (``OSError``,
    ``TimeoutError``) are retriable and anything else, a bug or bad data, is not.
    """
    if policy is not None and policy.classify is not None:
        try:
            verdict = policy.classify(exc)
        except Exception:
            log.exception("writebehind: RetryPolicy.classify raised; using the default answer")
            verdict = None
        if verdict is not None:
            return bool(verdict)
    if isinstance(exc, SinkError):
        return exc.retriable
    return isinstance(exc, OSError | TimeoutError)


def split(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """Halve a batch to isolate the records that fail permanently (bisection)."""
    mid = len(items) // 2
    return list(items[:mid]), list(items[mid:])


@dataclass(frozen=True, slots=True)
class Retry:
    """Write the same records again after ``wait`` seconds."""

    wait: float


@dataclass(frozen=True, slots=True)
class Split:
    """Halve the batch and deliver each half on its own (to isolate the bad records)."""


@dataclass(frozen=True, slots=True)
class Condemn:
    """Dead-letter the records: they can never be written (or the budget is spent)."""


Step = Retry | Split | Condemn


@dataclass(frozen=True, slots=True)
class Attempts:
    """What one batch has spent so far: failed tries (throttles excluded), seconds waited
    on throttles, and seconds since its first try."""

    failures: int = 0
    throttled_for: float = 0.0
    elapsed: float = 0.0


def next_step(
    policy: RetryPolicy,
    spent: Attempts,
    *,
    retriable: bool,
    throttled: bool,
    wait: float,
    size: int,
) -> tuple[Step, Attempts]:
    """After a failed write: retry, split or dead-letter, and the budget spent including
    this failure. Pure: the whole retry/split/dead-letter choice is here (a table test
    covers it).

    A throttle (``throttled``: the sink said "retry after") spends throttle time, not an
    attempt. A retriable failure spends an attempt. Either is retried while attempts,
    ``deadline`` and ``max_throttle_wait`` allow; a permanent failure splits a batch of more
    than one record and condemns a single record.
    """
    if not retriable:
        return (Split() if size > 1 else Condemn()), spent
    if throttled:
        spent = Attempts(spent.failures, spent.throttled_for + wait, spent.elapsed)
    else:
        spent = Attempts(spent.failures + 1, spent.throttled_for, spent.elapsed)
    if (
        spent.failures < policy.max_attempts
        and (policy.deadline is None or spent.elapsed + wait < policy.deadline)
        and spent.throttled_for <= policy.max_throttle_wait
    ):
        return Retry(wait), spent
    return Condemn(), spent


def retry_after(exc: BaseException) -> float | None:
    """The sink's "retry after N s" hint on ``exc``: a finite number of seconds > 0, or None
    (absent, or not a usable number: a raw header string, NaN, a negative value)."""
    raw = getattr(exc, "retry_after", None)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None
