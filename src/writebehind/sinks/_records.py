"""Reading a record's fields: mappings, dataclasses, msgspec Structs, named tuples, objects
(pydantic models included, with the extra fields of ``extra="allow"``), and SQLAlchemy ORM
instances (their loaded column attributes under their column names: ``_from_model``).

Records of one batch may have different shapes (a dataclass and its subclass, objects with
an optional attribute set on some only, dicts with different keys): each record is read with
its *own* field names, and the rows are grouped by shape, so no field is ever dropped. The
common case, one shape for the whole batch, takes a C-level fast path.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .._errors import PermanentSinkError
from ._from_model import is_orm, orm_shape

__all__ = ["check_keys", "check_shape", "field_names", "group_rows", "one_shape", "row_getter"]

Getter = Callable[[Any], tuple[Any, ...]]
Rows = dict[tuple[str, ...], list[tuple[Any, ...]]]
_DICT = {dict}


def field_names(record: Any) -> tuple[str, ...]:
    """The names of a record's fields, in order."""
    return _shape(record)[0]


def _shape(record: Any) -> tuple[tuple[str, ...], bool]:
    """A record's field names, and whether every instance of its class has those same
    names (dataclasses, msgspec Structs and named tuples do; mappings and plain objects
    need not)."""
    if isinstance(record, Mapping):
        return tuple(record), False
    if is_orm(record):  # before dataclasses: a MappedAsDataclass model is one too
        return orm_shape(record)[0], False
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return tuple(f.name for f in dataclasses.fields(record)), True
    names = getattr(type(record), "__struct_fields__", None) or getattr(record, "_fields", None)
    if names is not None:
        return tuple(names), True
    if hasattr(record, "__dict__"):
        names = tuple(k for k in vars(record) if not k.startswith("_"))
        return names + _extras(record), False
    raise PermanentSinkError(
        f"cannot read fields from a {type(record).__name__}; records must be mappings, "
        f"dataclasses, msgspec Structs, named tuples or plain objects"
    )


def _extras(record: Any) -> tuple[str, ...]:
    """The extra fields of a pydantic model with ``extra="allow"`` (``model_extra``, kept
    outside ``__dict__``): they are fields of the record like the declared ones."""
    extra = getattr(record, "__pydantic_extra__", None)
    return tuple(extra) if extra else ()


def _has_extras(cls: type) -> bool:
    """Whether instances of ``cls`` may carry pydantic extras (``extra="allow"``)."""
    config = getattr(cls, "model_config", None)
    return isinstance(config, Mapping) and config.get("extra") == "allow"


def row_getter(record: Any, names: tuple[str, ...]) -> Getter:
    """A function that reads ``names`` from records shaped like ``record``, as a tuple."""
    if not isinstance(record, Mapping) and is_orm(record):
        return orm_shape(record)[1]  # attributes read, under their column names
    return _getter(names, isinstance(record, Mapping))


def _getter(names: tuple[str, ...], mapping: bool) -> Getter:
    if not names:
        return _no_fields
    get = operator.itemgetter(*names) if mapping else operator.attrgetter(*names)
    if len(names) == 1:
        return lambda r: (get(r),)
    return get


def _no_fields(record: Any) -> tuple[Any, ...]:
    return ()


def group_rows(batch: list[Any]) -> Rows:
    """Turn records into value tuples, grouped by their field names (one group when all
    records share a shape, as they usually do). Every record is read with its own names.

    Fast paths, for records shaped like the first one: a plain dict with as many keys as
    the first and all of its names has exactly its keys (``operator.itemgetter``); an
    instance of the first record's class has its fields when the class fixes them
    (dataclass, Struct, named tuple); a plain object or other mapping whose keys equal the
    first one's has its names (``operator.attrgetter``/``itemgetter``). Anything else is
    read on its own and joins the group of its shape.
    """
    first = batch[0]
    names, fixed = _shape(first)
    groups: Rows = {}
    rows = groups[names] = []
    append = rows.append
    other = _Others(groups)
    if type(first) is dict and names:
        width = len(names)
        get = operator.itemgetter(*names)
        one = width == 1
        if not one and set(map(type, batch)) == _DICT and set(map(len, batch)) == {width}:
            try:  # every record a dict with exactly the first one's keys: C-level passes
                rows.extend(map(get, batch))
                return groups
            except KeyError:  # a dict with as many keys, but other ones
                rows.clear()
        for r in batch:
            if type(r) is dict and len(r) == width:
                try:
                    append((get(r),) if one else get(r))
                    continue
                except KeyError:
                    pass
            other.add(r)
        return groups
    kind = type(first)
    get_row = row_getter(first, names)
    if fixed:
        for r in batch:
            if type(r) is kind:
                append(get_row(r))
            else:
                other.add(r)
        return groups
    mapping = isinstance(first, Mapping)
    keys = first.keys() if mapping else getattr(first, "__dict__", {}).keys()
    if not mapping and _has_extras(kind):  # pydantic extras: the same ones as the first's
        extras = _extras(first)
        for r in batch:
            if type(r) is kind and r.__dict__.keys() == keys and _extras(r) == extras:
                append(get_row(r))
            else:
                other.add(r)
        return groups
    # the same keys: the same names (an ORM instance's loaded attributes included)
    for r in batch:
        if type(r) is kind and (r.keys() if mapping else r.__dict__.keys()) == keys:
            append(get_row(r))
        else:
            other.add(r)
    return groups


def one_shape(batch: list[Any]) -> tuple[tuple[str, ...], Getter, bool] | None:
    """The names, the row getter and whether they are mapping keys (else attributes), for
    a batch whose records all have the first one's shape, known without reading a row: all
    dicts with as many keys (at least two) as the first, or all instances of the first
    one's class when that class fixes its fields (dataclass, Struct, named tuple). None
    otherwise (:func:`group_rows` reads such a batch). A dict with as many keys but other
    ones raises ``KeyError`` when read: a caller reads every field once (and falls back on
    that error) before relying on the answer."""
    first = batch[0]
    kind = type(first)
    if kind is dict:
        width = len(first)
        if width < 2 or set(map(type, batch)) != _DICT or set(map(len, batch)) != {width}:
            return None
        names = tuple(first)
        return names, operator.itemgetter(*names), True
    names, fixed = _shape(first)
    if not fixed or set(map(type, batch)) != {kind}:
        return None
    return names, row_getter(first, names), False


class _Others:
    """Reads the records not shaped like the first, each with its own names (the getter
    cached per class when the class fixes the fields)."""

    def __init__(self, groups: Rows) -> None:
        self.groups = groups
        self.fixed: dict[type, tuple[tuple[str, ...], Getter]] = {}

    def add(self, record: Any) -> None:
        if type(record) is dict:
            names: tuple[str, ...] = tuple(record)
            row: tuple[Any, ...] = tuple(record.values())
        else:
            hit = self.fixed.get(type(record))
            if hit is None:
                names, fixed = _shape(record)
                get = row_getter(record, names)
                if fixed:
                    self.fixed[type(record)] = (names, get)
            else:
                names, get = hit
            row = get(record)
        rows = self.groups.get(names)
        if rows is None:
            rows = self.groups[names] = []
        rows.append(row)


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


def check_keys(names: tuple[str, ...], rows: list[tuple[Any, ...]], key: tuple[str, ...]) -> None:
    """Raise ``PermanentSinkError`` naming the key field if a row's key value is None.

    SQLite lets a NULL into a key (an ``INTEGER PRIMARY KEY`` assigns a new rowid, a UNIQUE
    index holds any number of NULLs), so ``ON CONFLICT`` never matches it: each write of
    such a record would insert one more row (a counter counted afresh each time). The
    batcher isolates the record and dead-letters it; the others are written."""
    for k in key:
        i = names.index(k)
        if any(row[i] is None for row in rows):
            raise PermanentSinkError(
                f"record key field {k!r} is None; a record needs a key to upsert (give it "
                f"one, or a sink without key= to append)"
            )
