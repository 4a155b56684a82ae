"""The dead-letter record codec: tagged JSON, never pickle.

JSON carries dicts with string keys, lists, strings, ints, bools and ``None`` as they are.
Everything else is a one-key object whose key is a tag:

- ``{"$dt": "..."}``: ``datetime`` (ISO 8601, with its offset when aware);
  ``{"$date": ...}``, ``{"$time": ...}`` likewise
- ``{"$uuid": "..."}``: ``UUID``; ``{"$dec": "..."}``: ``Decimal``
- ``{"$bytes": "..."}``: ``bytes`` / ``bytearray`` (base64)
- ``{"$tuple": [...]}``: ``tuple``
- ``{"$float": "..."}``: a float that JSON (or PostgreSQL's ``jsonb``, which turns ``1e300``
  into an integer) would not keep: ``nan``, ``inf``, ``-0.0``, or one with an exponent
- ``{"$chars": [...]}``: a string holding a NUL (``jsonb`` refuses it) or a lone surrogate
  (``os.fsdecode`` of a file name that is not UTF-8: no UTF-8 encoder, so neither SQLite nor
  PostgreSQL, takes it), as runs of plain text and the code points of those characters, in
  order: ``"a\\x00b"`` is ``{"$chars": ["a", 0, "b"]}``. Dict keys likewise (through
  ``$pairs``). Older stores hold ``{"$str": [...]}`` (NUL-joined parts); it still decodes.
- ``{"$pairs": [[key, value], ...]}``: a dict with a key that is not a plain string
- ``{"$map": {...}}``: a user dict whose single key starts with ``$`` (escaped, so it is
  never mistaken for a tag)
- ``{"$obj": [T, {...}]}``: a dataclass, a msgspec-like struct (``__struct_fields__``), an
  object with ``__slots__`` (every slot set, along the MRO) or with ``__dict__``: its type
  name ``T`` and its fields; it decodes to a plain dict (a SQLAlchemy ORM instance: its
  loaded column attributes under their column names, as the SQL sinks write it)

An enum member is stored as its value. A record that cannot be encoded (a set, a socket, a
cycle) is still stored: as its ``repr`` (NUL and lone surrogates escaped), with the encoding
``"repr"``; :func:`decode` refuses it with :class:`RecordNotReplayable`.

Every text the stores keep beside the record (the error message, the sink's name, ...) goes
through :func:`storable_text`, which escapes the same two kinds of character.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import re
import sys
import types
import uuid
from collections.abc import Callable
from typing import Any

from .._errors import WriteBehindError
from ..sinks._from_model import is_orm, orm_shape

__all__ = [
    "JSON",
    "REPR",
    "RecordNotReplayable",
    "decode",
    "encode",
    "storable_text",
    "type_name",
]

JSON = "json"
"""The encoding of a record stored as tagged JSON."""
REPR = "repr"
"""The encoding of a record that could not be encoded: its ``repr``, as a JSON string."""

_MAX_DEPTH = 200
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL (jsonb, PostgreSQL text), surrogates


class RecordNotReplayable(WriteBehindError):
    """A dead-lettered record was stored as its ``repr`` (it could not be encoded as JSON),
    so it cannot be turned back into a record and replayed."""


class _Unencodable(Exception):
    pass


def type_name(obj: Any) -> str:
    """``module.QualName`` of ``obj``'s type (just the name for builtins)."""
    cls = type(obj)
    module = getattr(cls, "__module__", "")
    qualname = getattr(cls, "__qualname__", cls.__name__)
    return storable_text(qualname if module in ("builtins", "") else f"{module}.{qualname}")


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates escaped (``\\x00``, ``\\udce9``): what every
    store's text columns take (PostgreSQL refuses NUL; no UTF-8 encoder takes a surrogate)."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(lambda m: ascii(m.group())[1:-1], text)


def encode(record: Any) -> tuple[str, str, str]:
    """``(json_text, encoding, type_name)`` for ``record``; never raises.

    ``encoding`` is :data:`JSON`, or :data:`REPR` when the record held something the codec
    cannot carry (then ``json_text`` is its ``repr`` as a JSON string).
    """
    name = type_name(record)
    try:
        return json.dumps(_enc(record, 0), ensure_ascii=False, allow_nan=False), JSON, name
    except (_Unencodable, ValueError, TypeError, RecursionError):
        pass
    return encode_repr(record)


def encode_repr(record: Any, *, ascii_only: bool = False) -> tuple[str, str, str]:
    """``(json_text, REPR, type_name)``: ``record`` kept as its ``repr`` (never raises).
    ``ascii_only`` escapes everything outside ASCII too (the stores' last resort)."""
    name = type_name(record)
    try:
        text = repr(record)
    except Exception as exc:  # a broken __repr__ must not lose the entry
        text = f"<{name} object; repr() failed: {type(exc).__name__}>"
    if not isinstance(text, str):  # pragma: no cover - repr() always returns a str
        text = f"<{name} object>"
    text = ascii(text)[1:-1] if ascii_only else storable_text(text)
    return json.dumps(text, ensure_ascii=ascii_only), REPR, name


def decode(text: str, encoding: str = JSON) -> Any:
    """The record stored as ``text``; objects come back as dicts of their fields.

    Raises :class:`RecordNotReplayable` for a record stored as its ``repr``.
    """
    if encoding != JSON:
        raise RecordNotReplayable(
            f"the record was stored as its repr (encoding {encoding!r}) because it could not "
            f"be encoded as JSON, so it cannot be replayed; read it with 'writebehind dlq show' "
            f"and re-add it yourself"
        )
    return _dec(json.loads(text))


def to_plain(text: str, encoding: str = JSON) -> Any:
    """The stored record as plain JSON data, for people and tools reading it (``dlq list
    --json``): datetimes, dates and times as ISO 8601 strings, UUIDs and decimals as
    strings, bytes as base64, tuples as lists, non-finite floats as ``"nan"``/``"inf"``,
    dict keys as strings. A record stored as its repr is that string. Not for replay:
    :func:`decode` gives the record back exactly."""
    if encoding != JSON:
        return json.loads(text)
    return _plain(decode(text))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _float(value: float) -> Any:
    text = repr(value)
    if not math.isfinite(value) or "e" in text or (value == 0.0 and math.copysign(1, value) < 0):
        return {"$float": text}
    return value


def _enc(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _Unencodable("too deep (a cycle?)")
    # exact types first: bool before int, and subclasses (IntEnum, str enums) go to repr
    # unless they are one of the plain types below
    t = type(value)
    if value is None or t is bool or t is int:
        return value
    if t is str:
        return value if _UNSTORABLE.search(value) is None else _chars(value)
    if t is float:
        return _float(value)
    if t is dict:
        return _enc_dict(value, depth + 1)
    if t is list:
        return [_enc(v, depth + 1) for v in value]
    if t is tuple:
        return {"$tuple": [_enc(v, depth + 1) for v in value]}
    simple = _SIMPLE.get(t)
    if simple is not None:
        return simple(value)
    if isinstance(value, enum.Enum):  # as its value, the way JSON encoders treat enums
        return _enc(value.value, depth + 1)
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a named tuple: its fields
        return {"$obj": [type_name(value), _enc_dict(dict(value._asdict()), depth + 1)]}
    if isinstance(value, dict):  # OrderedDict, Counter, a user's dict subclass: its items
        return {"$obj": [type_name(value), _enc_dict(dict(value), depth + 1)]}
    plain: type[Any]
    for plain in (list, tuple, str, int, float):  # other subclasses of the plain types
        if isinstance(value, plain):
            return _enc(plain(value), depth + 1)
    return _enc_object(value, depth + 1)


def _chars(value: str) -> Any:
    """``{"$chars": [...]}``: runs of plain text, and the code point of each NUL or lone
    surrogate between them."""
    parts: list[str | int] = []
    start = 0
    for m in _UNSTORABLE.finditer(value):
        if m.start() > start:
            parts.append(value[start : m.start()])
        parts.append(ord(m.group()))
        start = m.end()
    if start < len(value):
        parts.append(value[start:])
    return {"$chars": parts}


def _dec_chars(body: list[Any]) -> str:
    return "".join(p if isinstance(p, str) else chr(p) for p in body)


def _enc_dict(value: dict[Any, Any], depth: int) -> Any:
    if all(type(k) is str and _UNSTORABLE.search(k) is None for k in value):
        out = {k: _enc(v, depth) for k, v in value.items()}
        if len(out) == 1 and next(iter(out)).startswith("$"):
            return {"$map": out}
        return out
    return {"$pairs": [[_enc(k, depth), _enc(v, depth)] for k, v in value.items()]}


def _enc_object(value: Any, depth: int) -> Any:
    if is_orm(value):  # its column values under their column names, never its ORM state
        names, get = orm_shape(value)
        fields = dict(zip(names, get(value), strict=True))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif isinstance(getattr(type(value), "__struct_fields__", None), tuple):  # msgspec.Struct
        fields = {f: getattr(value, f) for f in type(value).__struct_fields__}
    elif callable(value) or isinstance(value, types.ModuleType):
        raise _Unencodable(type_name(value))
    else:
        slots = _slot_fields(value)
        attrs = getattr(value, "__dict__", None)
        if slots is None and not isinstance(attrs, dict):
            raise _Unencodable(type_name(value))
        fields = {**(slots or {}), **(attrs if isinstance(attrs, dict) else {})}
    return {"$obj": [type_name(value), _enc_dict(fields, depth)]}


def _slot_fields(value: Any) -> dict[str, Any] | None:
    """The slots set on ``value``, read along its MRO (bases first) by each class's own slot
    descriptor, under their declared names; None when no class declares a slot, or when a
    standard-library class does (a socket is not a record)."""
    fields: dict[str, Any] = {}
    declared = False
    for cls in reversed(type(value).__mro__):
        names = cls.__dict__.get("__slots__", ())
        names = (names,) if isinstance(names, str) else tuple(names)
        names = tuple(n for n in names if n not in ("__dict__", "__weakref__"))
        if not names:
            continue
        if cls.__module__.split(".")[0] in sys.stdlib_module_names:
            return None
        declared = True
        for name in names:
            private = name.startswith("__") and not name.endswith("__")
            attr = f"_{cls.__name__.lstrip('_')}{name}" if private else name
            slot = cls.__dict__.get(attr)
            if slot is None or not hasattr(slot, "__get__"):
                continue
            try:
                fields[name] = slot.__get__(value, type(value))
            except AttributeError:  # a slot never set
                continue
    return fields if declared else None


def _iso(value: dt.date | dt.time) -> str:
    return value.isoformat()


_SIMPLE: dict[type, Callable[[Any], Any]] = {
    dt.datetime: lambda v: {"$dt": _iso(v)},
    dt.date: lambda v: {"$date": _iso(v)},
    dt.time: lambda v: {"$time": _iso(v)},
    uuid.UUID: lambda v: {"$uuid": str(v)},
    decimal.Decimal: lambda v: {"$dec": str(v)},
    bytes: lambda v: {"$bytes": base64.b64encode(v).decode("ascii")},
    bytearray: lambda v: {"$bytes": base64.b64encode(bytes(v)).decode("ascii")},
}


def _dec(value: Any) -> Any:
    if isinstance(value, list):
        return [_dec(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        return {k: _dec(v) for k, v in value.items()}
    ((tag, body),) = value.items()
    if not tag.startswith("$"):
        return {tag: _dec(body)}
    decoder = _TAGS.get(tag)
    if decoder is None:
        raise ValueError(f"unknown tag {tag!r} in a stored dead-letter record")
    return decoder(body)


def _dec_obj(body: list[Any]) -> Any:
    _name, fields = body
    return _dec(fields)


_TAGS: dict[str, Callable[[Any], Any]] = {
    "$dt": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$time": dt.time.fromisoformat,
    "$uuid": uuid.UUID,
    "$dec": decimal.Decimal,
    "$bytes": lambda b: base64.b64decode(b.encode("ascii")),
    "$tuple": lambda b: tuple(_dec(v) for v in b),
    "$float": float,
    "$str": "\x00".join,  # written by older versions (NUL only)
    "$chars": _dec_chars,
    "$pairs": lambda b: {_dec(k): _dec(v) for k, v in b},
    "$map": lambda b: {k: _dec(v) for k, v in b.items()},
    "$obj": _dec_obj,
}
