"""Turning record values into what a column takes, for both SQL sinks.

- **Plain JSON** for structured values: nested dataclasses, pydantic models
  (``model_dump(mode="json")``), msgspec Structs (``msgspec.to_builtins``), ``Enum`` members
  (their value), datetimes and dates (ISO 8601), UUIDs and Decimals (strings), sets (lists).
  This is the JSON a reader of the column expects, not the dead-letter codec's tagged form.
  A sink's ``json_dumps=`` hook replaces ``json.dumps`` (it may return ``str`` or UTF-8
  ``bytes``, as orjson's does).
- **Enum members** written as their value in any column.
- **Per-column conversions** (``PostgresSink``: ISO-8601 strings for timestamp, date and uuid
  columns).

A value that cannot be converted is a :class:`~writebehind.PermanentSinkError` naming the
column and the record's key (:func:`bad_value`), so its dead letter says which field of which
record to fix. The common case, nothing to convert, costs one C-level pass over the batch's
value types.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import itertools
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import ConfigError, PermanentSinkError

__all__ = [
    "JsonDumps",
    "bad_value",
    "conversions",
    "convert_rows",
    "describe_key",
    "json_encoder",
    "plain",
    "sqlite_types",
    "structured",
    "enum_values",
    "iso_parser",
]

Fn = Callable[[Any], Any]
JsonDumps = Callable[[Any], "str | bytes"]
_SHOWN = 80  # characters of a key value shown in an error


def structured(cls: type) -> bool:
    """Whether instances of ``cls`` are records of fields (dataclass, pydantic model,
    msgspec Struct) that go into a column as a JSON object."""
    return (
        dataclasses.is_dataclass(cls)
        or hasattr(cls, "__pydantic_fields__")
        or hasattr(cls, "__struct_fields__")
    )


def plain(obj: Any) -> Any:
    """``json.dumps``'s ``default``: ``obj`` as plain JSON types (one level; ``json`` recurses)."""
    if isinstance(obj, enum.Enum):
        return obj.value
    cls = type(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if hasattr(cls, "__pydantic_fields__"):
        return obj.model_dump(mode="json")
    if hasattr(cls, "__struct_fields__"):
        import msgspec  # a Struct exists, so msgspec is installed

        return msgspec.to_builtins(obj)
    if isinstance(obj, dt.datetime | dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID | decimal.Decimal):
        return str(obj)
    if isinstance(obj, set | frozenset):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"Object of type {cls.__name__} is not JSON serializable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=plain)


def json_encoder(hook: JsonDumps | None) -> Callable[[Any], str]:
    """The function that turns a value into JSON text: ``json.dumps`` with :func:`plain`, or
    the user's ``json_dumps`` hook (``bytes`` decoded as UTF-8)."""
    if hook is None:
        return _dumps
    if not callable(hook):
        raise ConfigError(
            f"json_dumps: must be a function taking a value and returning JSON text (str or "
            f"bytes), e.g. json.dumps or orjson.dumps; got {hook!r}"
        )

    def encode(obj: Any) -> str:
        out = hook(obj)
        if isinstance(out, bytes | bytearray | memoryview):
            return bytes(out).decode()
        if not isinstance(out, str):
            raise TypeError(f"json_dumps returned a {type(out).__name__}, not str or bytes")
        return out

    return encode


def describe_key(names: tuple[str, ...], row: tuple[Any, ...], key: tuple[str, ...]) -> str:
    """``id='a'`` (or ``tenant=1, id='a'``) for ``row``: how an error names its record."""
    parts = []
    for k in key:
        shown = repr(row[names.index(k)]) if k in names else "<missing>"
        if len(shown) > _SHOWN:
            shown = shown[: _SHOWN - 3] + "..."
        parts.append(f"{k}={shown}")
    return ", ".join(parts) if parts else "<no key>"


def bad_value(
    column: str, detail: str, names: tuple[str, ...], row: tuple[Any, ...] | None,
    key: tuple[str, ...],
) -> PermanentSinkError:  # fmt: skip
    """The error for a value a column cannot take: it names the column and, when the
    record is known, its key."""
    which = f"the record with key {describe_key(names, row, key)}" if row is not None else None
    where = f"column {column!r}" + (f" of {which}" if which else " (a record of this batch)")
    return PermanentSinkError(f"{where}: {detail}")


def convert_rows(
    names: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    key: tuple[str, ...],
    by_type: Callable[[type], Fn | None],
    by_column: Mapping[str, Fn],
) -> list[tuple[Any, ...]]:
    """``rows`` with values converted: a column named in ``by_column`` through its function
    (which gets every value as it is, None included); in other columns, each value whose
    type ``by_type`` gives a function (cached by the caller) through that.
    Only columns that need it are rebuilt; a failure names the column and the record."""
    types = set(map(type, itertools.chain.from_iterable(rows)))
    found, wanted = conversions(names, types, by_type, by_column)
    if not found and not wanted:
        return rows  # the common case: nothing to convert
    columns = list(zip(*rows, strict=True))
    changed = False
    for i, column in enumerate(columns):
        fn: Fn | None = wanted.get(names[i])
        if fn is not None and getattr(fn, "strings_only", False):
            fn = fn if str in set(map(type, column)) else None
        if fn is None:
            if not found or found.keys().isdisjoint(set(map(type, column))):
                continue
            fn = _by_type(found)
        columns[i] = _apply(fn, column, i, names, rows, key)
        changed = True
    return list(zip(*columns, strict=True)) if changed else rows


def conversions(
    names: tuple[str, ...], types: set[type], by_type: Callable[[type], Fn | None],
    by_column: Mapping[str, Fn],
) -> tuple[dict[type, Fn], dict[str, Fn]]:  # fmt: skip
    """For values of ``types`` in columns ``names``: the per-type functions that apply, and
    the per-column ones (both empty: nothing to convert). See :func:`convert_rows`."""
    found = {t: f for t in types if (f := by_type(t)) is not None}
    # a function marked strings_only (the ISO parsers) changes nothing when no value is a str
    wanted = {
        n: f for n in names
        if (f := by_column.get(n)) is not None
        and (str in types or not getattr(f, "strings_only", False))
    }  # fmt: skip
    return found, wanted


def _timestamp(v: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an ISO-8601 timestamp") from None


def _date(v: str) -> dt.date:
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an ISO-8601 date (YYYY-MM-DD)") from None


def _uuid(v: str) -> uuid.UUID:
    try:
        return uuid.UUID(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a UUID") from None


_ISO: dict[str, Callable[[str], Any]] = {
    "timestamp with time zone": _timestamp,
    "timestamp without time zone": _timestamp,
    "date": _date,
    "uuid": _uuid,
}


def iso_parser(pg_type: str) -> Fn | None:
    """For a PostgreSQL column of ``pg_type`` (``format_type``'s spelling) that asyncpg
    will not take a string for (timestamps, dates, UUIDs), the conversion of a string value
    into that type: ISO 8601 (``datetime.fromisoformat``), as PostgreSQL would parse it from
    text. A timestamp without an offset is naive, which asyncpg sends as UTC."""
    parse = _ISO.get(pg_type)
    if parse is None:
        return None

    def from_iso(v: Any) -> Any:
        return parse(v) if isinstance(v, str) else v

    from_iso.strings_only = True  # type: ignore[attr-defined]  # see convert_rows
    return from_iso


def enum_values(cls: type) -> Fn | None:
    """``PostgresSink``'s per-type conversion: an ``Enum`` member is written as its value."""
    return _enum_value if issubclass(cls, enum.Enum) else None


def _enum_value(v: Any) -> Any:
    return v.value


_AS_IS = frozenset({str, int, float, bool, bytes, type(None)})


def sqlite_types(encode: Callable[[Any], str]) -> Callable[[type], Fn | None]:
    """``SQLiteSink``'s per-type conversion (resolved once per type): datetimes and dates as
    ISO 8601 text, UUIDs and Decimals as text, an ``Enum`` member as its value (converted in
    turn), dicts, lists and structured values (dataclasses, pydantic models, Structs) as JSON
    text through ``encode``."""
    cache: dict[type, Fn | None] = {}

    def resolve(cls: type) -> Fn | None:
        try:
            return cache[cls]
        except KeyError:
            fn = cache[cls] = _sqlite_type(cls, encode, resolve)
            return fn

    return resolve


def _sqlite_type(
    cls: type, encode: Callable[[Any], str], resolve: Callable[[type], Fn | None]
) -> Fn | None:
    if cls in _AS_IS:
        return None
    if issubclass(cls, enum.Enum):

        def member(v: Any) -> Any:
            fn = resolve(type(v.value))
            return v.value if fn is None else fn(v.value)

        return member
    if issubclass(cls, dt.datetime | dt.date | dt.time):
        return cls.isoformat
    if issubclass(cls, uuid.UUID | decimal.Decimal):
        return str
    if issubclass(cls, dict | list) or structured(cls):
        return encode
    return None


def _by_type(found: dict[type, Fn]) -> Fn:
    def adapt(v: Any) -> Any:
        fn = found.get(type(v))
        return v if fn is None else fn(v)

    return adapt


def _apply(
    fn: Fn, column: tuple[Any, ...], i: int, names: tuple[str, ...],
    rows: list[tuple[Any, ...]], key: tuple[str, ...],
) -> tuple[Any, ...]:  # fmt: skip
    try:
        return tuple(map(fn, column))
    except Exception:
        pass
    for j, v in enumerate(column):  # find the record (only when something failed)
        try:
            fn(v)
        except Exception as exc:
            raise bad_value(names[i], _reason(exc), names, rows[j], key) from exc
    return tuple(map(fn, column))  # it failed once, then not: one more try decides


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
