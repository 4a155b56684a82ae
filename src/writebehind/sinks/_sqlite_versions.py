"""How ``SQLiteSink`` stores versions so that SQLite orders them as Python does.

The upsert keeps a row unless ``excluded.version >= table.version``, and SQLite compares what
is stored: numbers as numbers, text byte by byte. So each kind of version is stored in a form
whose SQLite order is its Python order:

============================  ========================================================
version                       stored as
============================  ========================================================
``int``, ``float``            itself (NaN refused: it orders against nothing)
``decimal.Decimal``           an integer if it is one (within 64 bits), else a float when
                              it has at most 15 significant digits (then the float orders
                              exactly as the decimals do); otherwise refused
aware ``datetime``            UTC text, fixed width: ``2026-11-23T05:00:00.000000+00:00``
naive ``datetime``            fixed-width text: ``2026-11-23T05:00:00.000000``
``date``                      ``2026-11-23``
``str``, ``uuid.UUID``        text (``UUID`` as its canonical lowercase form)
``bytes``                     a blob (byte order)
============================  ========================================================

A column must be able to hold the kind unchanged: numbers need a column whose declared type
gives it INTEGER, REAL, NUMERIC or no (BLOB) affinity, since TEXT affinity would store them as
text (``'9' > '10'``); ``str`` versions need TEXT or no affinity, since numeric affinity turns
numeric-looking strings into numbers; integers beyond 2**53 need a column without REAL
affinity. One sink writes one kind: the first version it writes fixes the kind, and a version
of another kind (an aware datetime after naive ones, a ``str`` after numbers) is refused,
since SQLite would order it silently and wrongly. What a previous process wrote is not
inspected: keep one kind of version per table.

Every refusal is a ``PermanentSinkError`` naming the column, so the records at fault are
isolated and dead-lettered with the reason, and the others are written.
"""

from __future__ import annotations

import datetime as dt
import decimal
import operator
import uuid
from collections.abc import Callable
from typing import Any

from .._errors import PermanentSinkError

__all__ = ["Versions", "affinity"]

_INT64 = (-(2**63), 2**63 - 1)
_NONE = {type(None)}
_INTS = {int, bool, type(None)}
_NUMBERS = {int, bool, float, type(None)}
_AS_IS: dict[type, str] = {str: "str", bytes: "bytes"}
_DATETIME = {dt.datetime}
_EXACT_IN_REAL = 2**53
_DECIMAL_DIGITS = 15  # any decimal with this many significant digits round-trips a float
_NUMBER_AFFINITIES = ("INTEGER", "REAL", "NUMERIC", "BLOB")
_TEXT_AFFINITIES = ("TEXT", "BLOB")


def affinity(declared: str) -> str:
    """The affinity SQLite gives a column declared with type ``declared`` (its five rules,
    in order)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


class Versions:
    """Converts one version column's values to their stored form, refusing what SQLite
    could not order as Python does (see the module docstring)."""

    def __init__(self, column: str, declared: str) -> None:
        self.column = column
        self.declared = declared
        self.affinity = affinity(declared)
        self.kind: str | None = None
        """The kind of version this sink writes, fixed by the first one it saw."""

    def adapt(self, rows: list[tuple[Any, ...]], index: int) -> list[tuple[Any, ...]]:
        """``rows`` with the version at ``index`` in its stored form (the same list when
        nothing changes: integer, str or bytes versions, the common cases, cost one C-level
        pass)."""
        get = operator.itemgetter(index)
        types = set(map(type, map(get, rows)))
        if types <= _INTS:
            if types != _NONE:
                self._accept("number")
                if self.affinity == "REAL":
                    self._numbers(list(map(get, rows)))
            return rows  # beyond 64 bits, binding raises OverflowError: refused too
        if len(types - _NONE) == 1 and (kind := _AS_IS.get(next(iter(types - _NONE)))):
            self._accept(kind)  # exact str or bytes: stored as they are
            return rows
        values = list(map(get, rows))
        if types <= _NUMBERS:
            self._accept("number")
            self._numbers(values)
            return rows
        if types - _NONE == _DATETIME:
            stored = self._datetimes(values)
        else:
            stored = [self._convert(v) for v in values]
        columns = list(zip(*rows, strict=True))
        columns[index] = tuple(stored)
        return list(zip(*columns, strict=True))

    def _datetimes(self, values: list[Any]) -> list[str | None]:
        """The fast path for a column of plain ``datetime`` objects (and None)."""
        stored: list[str | None] = []
        append = stored.append
        kinds: dict[str, None] = {}  # in order of appearance
        utc = dt.UTC
        for v in values:
            if v is None:
                append(None)
            elif v.tzinfo is utc:
                kinds["aware datetime"] = None
                append(v.isoformat(timespec="microseconds"))
            elif v.utcoffset() is None:
                kinds["naive datetime"] = None
                append(v.isoformat(timespec="microseconds"))
            else:
                kinds["aware datetime"] = None
                try:
                    append(v.astimezone(utc).isoformat(timespec="microseconds"))
                except OverflowError as exc:
                    raise self._refuse(f"{v!r} is out of range in UTC") from exc
        for kind in kinds:
            self._accept(kind)
        return stored

    # -- numbers ------------------------------------------------------------------------
    def _numbers(self, values: list[Any]) -> None:
        """Refuse NaN, integers beyond 64 bits, and integers a REAL column would round."""
        present = [v for v in values if v is not None]
        if any(v != v for v in present):
            raise self._refuse("NaN orders against nothing")
        ints = [v for v in present if not isinstance(v, float)]
        if ints:
            low, high = min(ints), max(ints)
            if low < _INT64[0] or high > _INT64[1]:
                raise self._refuse("an integer beyond 64 bits cannot be stored")
            if self.affinity == "REAL" and max(-low, high) > _EXACT_IN_REAL:
                raise self._refuse(
                    f"the column is declared {self.declared!r} (REAL affinity), which "
                    f"stores integers beyond 2**53 inexactly; declare it INTEGER"
                )

    def _decimal(self, v: decimal.Decimal) -> int | float:
        if v.is_nan():
            raise self._refuse("NaN orders against nothing")
        if v.is_infinite():
            return float(v)
        if v == v.to_integral_value():
            n = int(v)
            self._numbers([n])
            return n
        if len(v.normalize().as_tuple().digits) > _DECIMAL_DIGITS:
            raise self._refuse(
                f"a Decimal with more than {_DECIMAL_DIGITS} significant digits cannot be "
                f"stored so that SQLite orders it exactly; use int, float or str versions"
            )
        return float(v)

    # -- everything else ----------------------------------------------------------------
    def _convert(self, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, int | float):
            self._accept("number")
            self._numbers([v])
            return v
        convert = _CONVERT.get(type(v))
        if convert is None:
            for base, fn in _CONVERT.items():  # subclasses: pendulum, pandas, str enums, ...
                if isinstance(v, base):
                    convert = fn
                    break
            else:
                raise self._refuse(
                    f"a {type(v).__name__} version cannot be ordered by SQLite; use int, "
                    f"float, Decimal, str, bytes, uuid.UUID, datetime or date"
                )
        kind, stored = convert(self, v)
        self._accept(kind)
        return stored

    def _accept(self, kind: str) -> None:
        if self.kind is None:
            self._check_affinity(kind)
            self.kind = kind
        elif kind != self.kind:
            raise self._refuse(
                f"{_ARTICLE[kind]} version after {_PLURAL[self.kind]}: SQLite would order them "
                f"silently and wrongly; keep one kind of version per table"
            )

    def _check_affinity(self, kind: str) -> None:
        if kind == "number" and self.affinity not in _NUMBER_AFFINITIES:
            raise self._refuse(
                f"the column is declared {self.declared!r} (TEXT affinity), which stores "
                f"numbers as text ('9' > '10'); declare it INTEGER, REAL or NUMERIC"
            )
        if kind == "str" and self.affinity not in _TEXT_AFFINITIES:
            raise self._refuse(
                f"the column is declared {self.declared!r} ({self.affinity} affinity), which "
                f"turns numeric-looking strings into numbers; declare it TEXT"
            )

    def _refuse(self, why: str) -> PermanentSinkError:
        return PermanentSinkError(f"version column {self.column!r}: {why}")


def _datetime(versions: Versions, v: dt.datetime) -> tuple[str, str]:
    if v.utcoffset() is None:
        return "naive datetime", _iso(v)
    try:
        u = v.astimezone(dt.UTC)
    except OverflowError as exc:
        raise versions._refuse(f"{v!r} is out of range in UTC") from exc
    return "aware datetime", _iso(u) + "+00:00"


def _iso(v: dt.datetime) -> str:
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T"
        f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"
    )


def _date(versions: Versions, v: dt.date) -> tuple[str, str]:
    return "date", f"{v.year:04d}-{v.month:02d}-{v.day:02d}"


def _decimal(versions: Versions, v: decimal.Decimal) -> tuple[str, int | float]:
    return "number", versions._decimal(v)


def _str(versions: Versions, v: str) -> tuple[str, str]:
    return "str", str.__str__(v)


def _uuid(versions: Versions, v: uuid.UUID) -> tuple[str, str]:
    return "uuid", str(v)


def _bytes(versions: Versions, v: bytes) -> tuple[str, bytes]:
    return "bytes", bytes(v)


# datetime before date: a datetime is a date too.
_CONVERT: dict[type, Callable[[Versions, Any], tuple[str, Any]]] = {
    dt.datetime: _datetime,
    dt.date: _date,
    decimal.Decimal: _decimal,
    str: _str,
    uuid.UUID: _uuid,
    bytes: _bytes,
}
_ARTICLE = {
    "number": "a number",
    "str": "a str",
    "uuid": "a UUID",
    "bytes": "a bytes",
    "date": "a date",
    "naive datetime": "a naive datetime",
    "aware datetime": "an aware datetime",
}
_PLURAL = {
    "number": "numbers",
    "str": "strs",
    "uuid": "UUIDs",
    "bytes": "bytes versions",
    "date": "dates",
    "naive datetime": "naive datetimes",
    "aware datetime": "aware datetimes",
}
