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
from typing import Any

from .._errors import RecordError
from ..dlq import _codec as tagged

__all__ = ["decode_done", "decode_record", "encode_done", "encode_record", "ranges"]

_RANGE = struct.Struct("<QQ")


def _flat(record: Any) -> bool:
    """A dict of plain scalars, UUIDs, datetimes, decimals and bytes (the common record),
    for which ``json.dumps`` with the codec's tags as ``default`` writes the same text as the
    codec's walk."""
    if type(record) is not dict or (len(record) == 1 and str(next(iter(record)))[:1] == "$"):
        return False
    unstorable = tagged._UNSTORABLE.search
    for k, v in record.items():
        if type(k) is not str or unstorable(k) is not None:
            return False
        t = type(v)
        if t is str:
            if unstorable(v) is not None:
                return False
        elif t is float:
            if tagged._float(v) is not v:
                return False
        elif not (v is None or t is bool or t is int or t in tagged._SIMPLE):
            return False
    return True


def _tag(value: Any) -> Any:
    """``json.dumps``'s ``default``: a UUID, datetime, Decimal or bytes as the codec tags
    it (``_flat`` let through only types in ``_SIMPLE``)."""
    return tagged._SIMPLE[type(value)](value)


def encode_record(record: Any) -> bytes:
    """``record`` as ASCII JSON bytes; ``RecordError`` naming the problem if it cannot be."""
    if _flat(record):  # the same text as below, without the codec's walk
        return json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=_tag).encode(
            "ascii"
        )
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
