"""What a frame's payload holds: a record as ASCII tagged JSON, or a set of done sequence
numbers as ranges.

Records use the dead-letter stores' tagged JSON (``writebehind.dlq._codec``: datetimes,
UUIDs, decimals, bytes, tuples, non-string keys, NUL and surrogates all survive; dataclasses,
msgspec Structs and plain objects come back as dicts of their fields; enums as their values).
Never pickle. Unlike the dead-letter stores, the spool refuses a record the codec could only
keep as its ``repr``: the spool must give back a record the sink can write.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as _esc
from typing import Any

from .._errors import RecordError
from ..dlq import _codec as tagged

__all__ = ["decode_done", "decode_record", "encode_done", "encode_record", "ranges"]

_RANGE = struct.Struct("<QQ")


_KEYS: dict[str, str] = {}  # a field name -> its JSON text and the colon (bounded)
_KEYS_MAX = 4096
_UUID = uuid.UUID
_SIMPLE = tagged._SIMPLE


def _flat_text(record: dict[Any, Any]) -> str | None:
    """The codec's text for a dict of plain scalars, UUIDs, datetimes, decimals and bytes
    under string keys (the common record), written in one pass without the codec's walk;
    None for anything else (the walk decides). Byte for byte what the codec writes, except
    that strings holding NUL or a surrogate (which the codec tags) come out as escapes:
    :func:`encode_record` looks for those in the text."""
    parts: list[str] = []
    add = parts.append
    keys = _KEYS
    for k, v in record.items():
        if type(k) is not str:
            return None
        ek = keys.get(k)
        if ek is None:
            ek = _esc(k) + ":"
            if len(keys) < _KEYS_MAX:
                keys[k] = ek
        t = type(v)
        if t is str:
            add(ek + _esc(v))
        elif t is int:
            add(ek + int.__repr__(v))
        elif t is _UUID:  # str(v) without its method call: 32 hex digits in 8-4-4-4-12
            h = v.int.to_bytes(16, "big").hex()
            add(f'{ek}{{"$uuid":"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"}}')
        elif t is bool:
            add(ek + ("true" if v else "false"))
        elif v is None:
            add(ek + "null")
        elif t is float:
            if tagged._float(v) is not v:  # NaN, infinities, -0.0, exponents: tagged
                return None
            add(ek + float.__repr__(v))
        else:
            simple = _SIMPLE.get(t)
            if simple is None:
                return None
            ((tag, body),) = simple(v).items()
            add(ek + "{" + _esc(tag) + ":" + _esc(body) + "}")
    if len(parts) == 1 and next(iter(record))[:1] == "$":
        return None  # one "$..." key: the codec escapes it (it would read as a tag)
    return "{" + ",".join(parts) + "}"


def encode_record(record: Any) -> bytes:
    """``record`` as ASCII JSON bytes; ``RecordError`` naming the problem if it cannot be."""
    if type(record) is dict:
        text = _flat_text(record)  # the codec's text, without its walk
        # NUL and surrogates (which the codec tags) show as these escapes; so do other
        # characters (U+D000-U+D7FF, pairs): those few take the codec's walk below
        if text is not None and "\\u0000" not in text and "\\ud" not in text:
            return text.encode("ascii")
    try:
        tree = tagged._enc(record, 0)
        text = json.dumps(tree, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except tagged._Unencodable as exc:
        raise RecordError(
            f"cannot spool a record of type {tagged.type_name(record)}: it holds "
            f"{exc.args[0] if exc.args else 'something'} that the spool cannot store as "
            f"data (it stores dicts, lists, str, int, float, bool, None, datetime, date, "
            f"time, UUID, Decimal, bytes, tuples, enums, dataclasses and plain objects of "
            f"those); convert it to one of these first"
        ) from None
    except RecursionError:
        raise RecordError(
            f"cannot spool a record of type {tagged.type_name(record)}: it is nested too "
            f"deeply (or holds a cycle)"
        ) from None
    except (TypeError, ValueError) as exc:
        raise RecordError(
            f"cannot spool a record of type {tagged.type_name(record)}: {exc}"
        ) from None
    return text.encode("ascii")


def decode_record(payload: bytes) -> Any:
    """The record ``payload`` holds (``ValueError`` if it is not the spool's JSON)."""
    return tagged.decode(payload.decode("ascii"))


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """``seqs`` as sorted, merged inclusive ranges."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and out[-1][1] + 1 == s:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def encode_done(spans: Iterable[tuple[int, int]]) -> bytes:
    """A done frame's payload: inclusive ranges of sequence numbers."""
    return b"".join(_RANGE.pack(a, b) for a, b in spans)


def decode_done(payload: bytes) -> list[tuple[int, int]]:
    """The ranges a done frame's payload holds (``ValueError`` if it is malformed)."""
    if len(payload) % _RANGE.size:
        raise ValueError("a done frame's payload is not a whole number of ranges")
    return [_RANGE.unpack_from(payload, i) for i in range(0, len(payload), _RANGE.size)]
