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
from collections.abc import Iterable
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from .._errors import RecordError
from ..dlq import _codec as tagged

__all__ = ["decode_done", "decode_record", "encode_done", "encode_record", "ranges"]

_RANGE = struct.Struct("<QQ")


_FLAT_TYPES = frozenset({str, int, bool, type(None), *tagged._SIMPLE})

_flat_json = c_make_encoder(  # the C encoder, made once (json.dumps makes one per call)
    None, lambda v: tagged._SIMPLE[type(v)](v), encode_basestring_ascii, None, ":", ",",
    False, False, True,
)  # fmt: skip


def _flat(record: dict[Any, Any]) -> bool:
    """A dict of plain scalars, UUIDs, datetimes, decimals and bytes under string keys (the
    common record), for which the C encoder with the codec's tags as ``default`` writes the
    same text as the codec's walk, unless a string holds NUL or a surrogate (which
    :func:`encode_record` looks for in the text)."""
    if len(record) == 1 and str(next(iter(record)))[:1] == "$":
        return False
    for k, v in record.items():
        if type(k) is not str:
            return False
        t = type(v)
        if t is float:
            if tagged._float(v) is not v:
                return False
        elif t not in _FLAT_TYPES:
            return False
    return True


def encode_record(record: Any) -> bytes:
    """``record`` as ASCII JSON bytes; ``RecordError`` naming the problem if it cannot be."""
    if type(record) is dict and _flat(record):  # the codec's text, without its walk
        text = "".join(_flat_json(record, 0))
        # NUL and surrogates (which the codec tags) show as these escapes; so do other
        # characters (U+D000-U+D7FF, pairs): those few take the codec's walk below
        if "\\u0000" not in text and "\\ud" not in text:
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
