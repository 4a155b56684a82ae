"""Ready-made ``merge=`` functions: how a pending record and a new one with the same key
become one, instead of the newer replacing the older.

>>> import writebehind as wb
>>> views = wb.merge.sum_fields("views")
>>> views({"page": "/", "views": 3}, {"page": "/", "views": 1})
{'page': '/', 'views': 4}
>>> presence = wb.merge.combine(wb.merge.keep_first("first_seen"), wb.merge.latest)
>>> presence({"id": 1, "first_seen": 10, "last_seen": 10}, {"id": 1, "first_seen": 99,
...                                                          "last_seen": 99})
{'id': 1, 'first_seen': 10, 'last_seen': 99}

Every merge returns a new record and leaves both inputs as they were. Records may be
mappings (a new ``dict`` is returned), dataclasses (``dataclasses.replace``), msgspec
Structs, named tuples (``_replace``), pydantic v2 models (``model_copy``) or SQLAlchemy ORM
instances (a new transient instance with the column attributes loaded on the new one, so
``from_model`` records can be summed: ``sinks._from_model.orm_copy``); anything else raises
``TypeError``, which the batcher reports as a ``RecordError`` naming the key.

A merge runs under the batcher's intake lock, on the thread that calls ``add()``: keep it
quick, and never call the batcher from it.

**Sums need a sink that adds.** ``sum_fields`` turns every pending delta of a key into one
record carrying their sum. A sink that *overwrites* the column with it would lose what other
processes (or earlier batches) added: give the SQL sinks ``increment=("views",)`` so the
statement adds (``SET views = t.views + excluded.views``). Writes are at least once: a write
retried after a commit whose answer was lost adds its deltas twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Merge", "combine", "keep_first", "latest", "sum_fields", "union_fields"]

Merge = Callable[[Any, Any], Any]
"""``merge(old, new) -> record``: ``old`` is the pending record, ``new`` the one added."""


def latest(old: Any, new: Any) -> Any:
    """The record added last (what the batcher does without ``merge=``, versions aside)."""
    return new


def sum_fields(*names: str) -> Merge:
    """The new record, with each of ``names`` the sum of the old and new values (a missing
    or None value counts as 0): view counters, rates, quantities."""
    _check_names("sum_fields", names)

    def merge(old: Any, new: Any) -> Any:
        return _with(new, {n: (_get(old, n) or 0) + (_get(new, n) or 0) for n in names})

    merge.__qualname__ = f"sum_fields{names!r}"
    return merge


def keep_first(*names: str) -> Merge:
    """The new record, with ``names`` kept from the old one: ``first_seen``, ``created_at``."""
    _check_names("keep_first", names)

    def merge(old: Any, new: Any) -> Any:
        return _with(new, {n: _get(old, n) for n in names})

    merge.__qualname__ = f"keep_first{names!r}"
    return merge


def union_fields(*names: str) -> Merge:
    """The new record, with each of ``names`` the union of the old and new collections (a
    ``frozenset`` of both; a missing or None value counts as empty): tags, seen-by sets."""
    _check_names("union_fields", names)

    def merge(old: Any, new: Any) -> Any:
        return _with(
            new,
            {n: frozenset(_get(old, n) or ()) | frozenset(_get(new, n) or ()) for n in names},
        )

    merge.__qualname__ = f"union_fields{names!r}"
    return merge


def combine(*merges: Merge) -> Merge:
    """Apply ``merges`` in turn, each to the old record and what the previous one made:
    ``combine(keep_first("first_seen"), sum_fields("beats"))``."""
    if not merges or not all(callable(m) for m in merges):
        raise TypeError("combine() takes one or more merge functions")

    def merge(old: Any, new: Any) -> Any:
        for m in merges:
            new = m(old, new)
        return new

    return merge


def _check_names(what: str, names: tuple[str, ...]) -> None:
    if not names or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"{what}() takes one or more field names (non-empty strings)")


def _get(record: Any, name: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def _with(record: Any, values: dict[str, Any]) -> Any:
    """A copy of ``record`` with ``values`` set."""
    if isinstance(record, Mapping):
        return {**record, **values}
    if "_sa_instance_state" in getattr(record, "__dict__", ()):  # a SQLAlchemy ORM instance
        from .sinks._from_model import orm_copy  # before dataclasses: MappedAsDataclass

        return orm_copy(record, values)
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.replace(record, **values)
    if hasattr(type(record), "__struct_fields__"):  # a msgspec Struct
        import msgspec.structs

        return msgspec.structs.replace(record, **values)
    model_copy = getattr(record, "model_copy", None)
    if model_copy is not None:  # pydantic v2
        return model_copy(update=values)
    replace = getattr(record, "_replace", None)  # a named tuple
    if replace is None:
        raise TypeError(
            f"cannot make a changed copy of a {type(record).__name__}: merge functions "
            f"handle mappings, dataclasses, msgspec Structs, named tuples, pydantic models "
            f"and SQLAlchemy ORM instances"
        )
    return replace(**values)
