"""Reading a record's fields: mappings, dataclasses, msgspec Structs, named tuples, objects."""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .._errors import PermanentSinkError

__all__ = ["adapt_columns", "check_shape", "field_names", "group_rows", "row_getter"]


def field_names(record: Any) -> tuple[str, ...]:
    """The names of a record's fields, in order."""
    if isinstance(record, Mapping):
        return tuple(record)
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return tuple(f.name for f in dataclasses.fields(record))
    names = getattr(type(record), "__struct_fields__", None) or getattr(record, "_fields", None)
    if names is not None:
        return tuple(names)
    if hasattr(record, "__dict__"):
        return tuple(k for k in vars(record) if not k.startswith("_"))
    raise PermanentSinkError(
        f"cannot read fields from a {type(record).__name__}; records must be mappings, "
        f"dataclasses, msgspec Structs, named tuples or plain objects"
    )


def row_getter(record: Any, names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function that reads ``names`` from records shaped like ``record``."""
    if isinstance(record, Mapping):
        return lambda r: tuple(r[n] for n in names)
    return lambda r: tuple(getattr(r, n) for n in names)


Rows = dict[tuple[str, ...], list[tuple[Any, ...]]]


def group_rows(batch: list[Any]) -> Rows:
    """Turn records into value tuples, grouped by their field names (one group when all
    records share a shape, as they usually do).

    Plain dicts shaped like the first record take a C fast path (``operator.itemgetter``):
    a dict with as many keys as the first and all of its names has exactly its keys.
    """
    groups: Rows = {}
    first = batch[0]
    names = field_names(first)
    rows = groups[names] = []
    if type(first) is dict and names:
        width = len(names)
        get = operator.itemgetter(*names)
        one = width == 1
        for r in batch:
            if type(r) is dict and len(r) == width:
                try:
                    rows.append((get(r),) if one else get(r))
                    continue
                except KeyError:
                    pass
            other = field_names(r)
            groups.setdefault(other, []).append(row_getter(r, other)(r))
    else:
        get_row = row_getter(first, names)
        mapping = isinstance(first, Mapping)
        keys = first.keys() if mapping else None
        for r in batch:
            if mapping and (not isinstance(r, Mapping) or r.keys() != keys):
                other = field_names(r)
                groups.setdefault(other, []).append(row_getter(r, other)(r))
                continue
            rows.append(get_row(r))
    return {k: v for k, v in groups.items() if v}


def adapt_columns(
    rows: list[tuple[Any, ...]], adapters: Mapping[type, Callable[[Any], Any]]
) -> list[tuple[Any, ...]]:
    """Convert values whose type has an adapter, looking at each column once per batch (a
    C-level pass over the column's types) and rebuilding only columns that need it."""
    if adapters.keys().isdisjoint(set(map(type, itertools.chain.from_iterable(rows)))):
        return rows  # the common case: one C-level pass over every value, nothing to convert
    columns = list(zip(*rows, strict=True))
    changed = False
    for i, column in enumerate(columns):
        if not adapters.keys().isdisjoint(set(map(type, column))):
            columns[i] = tuple(adapters[type(v)](v) if type(v) in adapters else v for v in column)
            changed = True
    return list(zip(*columns, strict=True)) if changed else rows


def check_shape(
    names: tuple[str, ...], columns: Collection[str], key: tuple[str, ...], table: str
) -> None:
    """Raise ``PermanentSinkError`` naming a field the table lacks, or a missing key field."""
    unknown = [n for n in names if n not in columns]
    if unknown:
        raise PermanentSinkError(f"record field {unknown[0]!r} is not a column of table {table!r}")
    missing = [k for k in key if k not in names]
    if missing:
        raise PermanentSinkError(f"record lacks the key field {missing[0]!r}")
