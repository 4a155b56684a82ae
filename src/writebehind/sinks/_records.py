"""Reading a record's fields: mappings, dataclasses, msgspec Structs, named tuples, objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import PermanentSinkError

__all__ = ["field_names", "row_getter"]


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
