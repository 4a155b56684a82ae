"""Key and version extraction: a field name, a tuple of field names, or a callable.

A getter reads a field from a mapping (``record[name]``) or, failing that, an attribute
(``record.name``: dataclasses, msgspec Structs, named tuples). The intake's hot path
replaces a ``uuid.UUID`` key by its integer, which hashes several times faster and is equal
exactly when the UUIDs are.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from ._errors import ConfigError, RecordError

__all__ = ["FieldSpec", "fast_getter", "field_names", "make_getter"]

FieldSpec = str | tuple[str, ...] | Callable[[Any], Any] | None


def _field(record: Any, name: str) -> Any:
    try:
        return record[name]
    except (TypeError, IndexError):
        try:
            return getattr(record, name)
        except AttributeError:
            pass
    except KeyError:
        pass
    raise RecordError(
        f"record has no field {name!r} (a {type(record).__name__}); every record needs the "
        f"key and version fields the batcher was configured with"
    )


def make_getter(spec: FieldSpec, what: str) -> Callable[[Any], Any] | None:
    """Build the function that reads ``what`` ("key" or "version") from a record."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if not spec:
            raise ConfigError(f"{what}: must be a field name, a tuple of field names or a callable")
        name = spec

        def one(record: Any) -> Any:
            try:
                value = record[name]
            except (TypeError, KeyError, IndexError):
                value = _field(record, name)
            return value

        return one
    if isinstance(spec, tuple):
        if not spec or not all(isinstance(n, str) and n for n in spec):
            raise ConfigError(f"{what}: a tuple must hold one or more field names, got {spec!r}")
        names = spec

        def many(record: Any) -> Any:
            return tuple(_field(record, n) for n in names)

        return many
    if callable(spec):
        fn = spec

        def call(record: Any) -> Any:
            try:
                return fn(record)
            except RecordError:
                raise
            except Exception as exc:
                raise RecordError(f"{what} function failed on a record: {exc!r}") from exc

        return call
    raise ConfigError(
        f"{what}: must be a field name, a tuple of field names or a callable, got {spec!r}"
    )


def fast_getter(spec: FieldSpec, what: str) -> Callable[[Any], Any]:
    """A C-speed getter for mapping records (``operator.itemgetter``); it raises ``KeyError``
    or ``TypeError`` on other records, which then take :func:`make_getter`'s getter. A
    callable spec is its own fast getter (wrapped to raise ``RecordError``)."""
    if isinstance(spec, str):
        return operator.itemgetter(spec)
    if isinstance(spec, tuple):
        if len(spec) == 1:
            return lambda record: (record[spec[0]],)
        return operator.itemgetter(*spec)
    getter = make_getter(spec, what)
    assert getter is not None
    return getter


def field_names(*specs: Any) -> tuple[str, ...] | None:
    """The record fields the key, version and cost read, if they are all field names (a
    str or a tuple of str; a number reads none); None if any is a callable."""
    names: list[str] = []
    for spec in specs:
        if spec is None or (isinstance(spec, int | float) and not isinstance(spec, bool)):
            continue
        if isinstance(spec, str):
            names.append(spec)
        elif isinstance(spec, tuple) and all(isinstance(n, str) for n in spec):
            names.extend(spec)
        else:
            return None
    return tuple(names)
