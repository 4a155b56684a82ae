"""Reading a record's fields: mappings, dataclasses, msgspec Structs, named tuples, objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .._errors import PermanentSinkError

__all__ = ["check_shape", "field_names", "group_rows", "row_getter"]


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


def group_rows(batch: list[Any], adapt: Callable[[tuple[Any, ...]], tuple[Any, ...]]) -> Rows:
    """Turn records into value tuples, grouped by their field names (one group when all
    records share a shape, as they usually do)."""
    groups: Rows = {}
    first = batch[0]
    names = field_names(first)
    get = row_getter(first, names)
    rows = groups[names] = []
    mapping = isinstance(first, Mapping)
    keys = first.keys() if mapping else None
    for r in batch:
        if mapping and (not isinstance(r, Mapping) or r.keys() != keys):
            other = field_names(r)
            groups.setdefault(other, []).append(adapt(row_getter(r, other)(r)))
            continue
        rows.append(adapt(get(r)))
    return {k: v for k, v in groups.items() if v}


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
