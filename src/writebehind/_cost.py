"""What records cost against a capacity: ``cost=`` read on the hot path, and the cost of
the records pending in an intake."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

from ._errors import ConfigError, RecordError
from ._keys import make_getter

__all__ = [
    "CostSpec",
    "as_cost",
    "cost_getter",
    "cost_of",
    "fit",
    "head_cost",
    "is_number",
    "pending_cost",
]

CostSpec = int | float | str | Callable[[Any], Any]
"""``cost=``: a number (every record costs it), a field name, or a callable on the record."""

_MAX_COST = 1e300
"""The largest cost taken: sums of larger numbers would overflow a float."""


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_cost(value: Any) -> float | None:
    """``value`` as a float if it is a real number (not a bool) from 0 to ``_MAX_COST``."""
    if not is_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if 0 <= number <= _MAX_COST else None  # NaN fails both


def cost_getter(
    spec: CostSpec, most: float | None = None
) -> tuple[float, Callable[[Any], float] | None]:
    """``(constant, None)`` when every record costs the same; ``(0, getter)`` otherwise.

    The getter raises ``RecordError`` for a cost that is not a finite number >= 0 and, with
    ``most`` (a capacity's ``max_cost``), for one above it: such a record is not accepted.
    A field name reads mappings at C speed (``itemgetter``) and anything else by attribute;
    an int or float in range is returned as it is (no conversion on the hot path)."""
    if is_number(spec):
        constant = as_cost(spec)
        if constant is None:
            raise ConfigError(f"cost: must be a finite number >= 0, got {spec!r}")
        return constant, None
    if isinstance(spec, str) and spec:
        fast: Callable[[Any], Any] | None = operator.itemgetter(spec)
        name = spec

        def slow(record: Any) -> Any:
            try:
                return getattr(record, name)
            except AttributeError:
                raise RecordError(
                    f"record has no cost field {name!r} (a {type(record).__name__}); with "
                    f"cost={name!r} every record needs it"
                ) from None

    elif callable(spec) and not isinstance(spec, str | tuple):
        fast, slow = None, make_getter(spec, "cost")  # type: ignore[assignment]
    else:
        raise ConfigError(
            f"cost: must be a number, a field name (a non-empty str) or a callable on the "
            f"record, got {spec!r}"
        )
    top = _MAX_COST if most is None else min(most, _MAX_COST)

    def refuse(value: Any) -> float:
        number = as_cost(value)
        if number is None:
            raise RecordError(
                f"cost {value!r} is not a finite number >= 0; the record was not accepted"
            )
        if number > top:
            raise RecordError(
                f"cost {number:g} is more than the capacity could ever grant in a second "
                f"({top:g}): the record was not accepted (it could never be written)"
            )
        return number

    def cost_of(record: Any) -> float:
        if fast is not None:
            try:
                value = fast(record)
            except (KeyError, TypeError, IndexError):
                value = slow(record)
        else:
            value = slow(record)
        kind = type(value)
        if (kind is int or kind is float) and 0 <= value <= top:  # NaN and bools go below
            return value  # type: ignore[no-any-return]
        return refuse(value)

    return 0.0, cost_of


def fit(intake: Any, n: int, budget: float) -> int:
    """How many of the oldest ``n`` records pending in ``intake`` (an ``_intake.Intake``,
    typed loosely: it imports this module) cost no more than ``budget`` together. Lock held."""
    slack = budget * 1e-9  # credit is a float: a budget of exactly k records buys k
    if intake._cost_of is None:
        unit = intake.unit_cost
        return n if unit <= 0 else min(n, int((budget + slack) / unit))
    total, k = 0.0, 0
    pending = intake._pending
    for key in itertools.islice(intake._order, n):
        total += pending[key]._cost
        if total > budget + slack:
            break
        k += 1
    return k


def head_cost(intake: Any, n: int) -> tuple[float, float]:
    """The cost of the oldest pending record, and of the oldest ``n`` together."""
    with intake.locked():
        if intake._cost_of is None:
            k = min(n, len(intake._pending))
            return (intake.unit_cost if k else 0.0), intake.unit_cost * k
        pending = intake._pending
        costs = [pending[key]._cost for key in itertools.islice(intake._order, n)]
    return (costs[0] if costs else 0.0), sum(costs)


def cost_of(intake: Any, receipts: list[Any]) -> float:
    """What ``receipts`` cost together."""
    if intake._cost_of is None:
        return float(intake.unit_cost * len(receipts))
    return float(sum(r._cost for r in receipts))


def pending_cost(intake: Any) -> float:
    """What every pending record costs together (``Stats.needs_capacity``, less what is in
    flight)."""
    with intake.locked():
        if intake._cost_of is None:
            return float(intake.unit_cost * len(intake._pending))
        held = list(intake._pending.values())  # a copy under the lock; summed outside it
    return float(sum(r._cost for r in held))
