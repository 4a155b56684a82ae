"""The frame format and its scanner; the payload codec."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import writebehind as wb
from writebehind.spool._codec import (
    decode_done,
    decode_record,
    encode_done,
    encode_record,
    ranges,
)
from writebehind.spool._frames import DONE, HEADER, MAGIC, RECORD, encode_frame, scan


def frames(n: int) -> tuple[bytes, list[tuple[int, int]]]:
    """``n`` record frames and each one's (start, end)."""
    out, spans, pos = [], [], 0
    for i in range(1, n + 1):
        f = encode_frame(RECORD, i, 1000.0 + i, encode_record({"i": i, "s": "y" * i}))
        out.append(f)
        spans.append((pos, pos + len(f)))
        pos += len(f)
    return b"".join(out), spans


def test_scan_reads_back_what_was_encoded() -> None:
    """Every frame comes back with its kind, seq, time and payload; nothing is damaged."""
    data, _ = frames(5)
    found = scan(data)
    assert [f.seq for f in found.frames] == [1, 2, 3, 4, 5]
    assert found.frames[2].time == 1003.0
    assert decode_record(found.frames[2].payload) == {"i": 3, "s": "yyy"}
    assert found.damage == []


def test_a_flipped_payload_bit_loses_exactly_that_frame() -> None:
    """A bad payload CRC with a good header skips exactly the frame's length."""
    data, spans = frames(5)
    b = bytearray(data)
    b[spans[2][0] + HEADER + 3] ^= 0x10
    found = scan(bytes(b))
    assert [f.seq for f in found.frames] == [1, 2, 4, 5]
    assert [(r.start, r.end, r.header_ok) for r in found.damage] == [(*spans[2], True)]


def test_a_flipped_header_bit_resyncs_at_the_next_frame() -> None:
    """A bad header is not trusted for its length; the scanner finds the next frame."""
    data, spans = frames(5)
    for offset in range(HEADER):
        b = bytearray(data)
        b[spans[1][0] + offset] ^= 0x01
        found = scan(bytes(b))
        assert [f.seq for f in found.frames] == [1, 3, 4, 5], offset
        assert [(r.start, r.end) for r in found.damage] == [(spans[1][0], spans[2][0])]


def test_a_torn_tail_is_torn() -> None:
    """Cut anywhere inside the last frame: the frames before it, and a torn region to the end."""
    data, spans = frames(3)
    for cut in range(spans[2][0] + 1, len(data)):
        found = scan(data[:cut])
        assert [f.seq for f in found.frames] == [1, 2]
        assert len(found.damage) == 1
        assert found.damage[0].torn


def test_garbage_between_frames_is_one_region() -> None:
    """Zeros (a page that never reached the disk) between frames: one region, then frames."""
    data, spans = frames(4)
    b = data[: spans[2][0]] + bytes(300) + data[spans[2][0] :]
    found = scan(b)
    assert [f.seq for f in found.frames] == [1, 2, 3, 4]
    assert [(r.start, r.end, r.torn) for r in found.damage] == [
        (spans[2][0], spans[2][0] + 300, False)
    ]


def test_a_newer_format_is_reported() -> None:
    """A frame with a higher version is not read, and the scan says so."""
    f = bytearray(encode_frame(RECORD, 1, 0.0, b"{}"))
    f[4] = 2
    from writebehind.spool._frames import crc32c

    f[32:36] = crc32c(bytes(f[4:32])).to_bytes(4, "little")
    assert scan(bytes(f)).newer_format == 2


class Colour(enum.Enum):
    RED = "red"


@dataclass
class Point:
    x: int
    y: float


def test_records_round_trip() -> None:
    """UUIDs, datetimes, decimals, bytes, tuples, nested dicts and lists, NULs, non-ASCII and
    non-string keys survive; enums and dataclasses come back as their data."""
    record: Any = {
        "id": uuid.uuid4(),
        "at": dt.datetime(2026, 12, 3, 6, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "day": dt.date(2026, 1, 2),
        "amount": decimal.Decimal("12.3400"),
        "raw": b"\x00\xff",
        "pair": (1, ("a", None)),
        "nested": {"list": [1, 2.5, {"deep": [True, False]}], 7: "int key"},
        "text": "é ü 😀 \x00 nul",
        "big": 10**30,
        "inf": float("inf"),
    }
    payload = encode_record(record)
    assert payload.isascii()
    assert decode_record(payload) == record
    assert decode_record(encode_record({"c": Colour.RED, "p": Point(1, 2.0)})) == {
        "c": "red",
        "p": {"x": 1, "y": 2.0},
    }


@pytest.mark.parametrize(
    "record", [{"f": lambda: 1}, {"s": object()}, [open]], ids=["lambda", "object", "builtin"]
)
def test_unencodable_records_raise_record_error(record: Any) -> None:
    """What the codec could only keep as a repr is refused with RecordError."""
    with pytest.raises(wb.RecordError, match="cannot spool a record"):
        encode_record(record)


def test_a_cycle_is_refused() -> None:
    """A record that contains itself is a RecordError, not a crash."""
    a: list[Any] = []
    a.append(a)
    with pytest.raises(wb.RecordError):
        encode_record(a)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.uuids()
    | st.datetimes()
    | st.decimals(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.tuples(inner, inner)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_any_primitive_record_round_trips(record: Any) -> None:
    """Whatever mix of primitives a record holds comes back equal, as ASCII (a datetime's
    ``fold`` aside: ISO 8601 does not carry it, and it does not change equality)."""
    payload = encode_record(record)
    assert payload.isascii()
    assert MAGIC not in payload
    back = decode_record(payload)
    assert back == record


@given(st.sets(st.integers(min_value=1, max_value=10**12), max_size=50))
def test_done_ranges_round_trip(seqs: set[int]) -> None:
    """Done marks as merged ranges cover exactly the sequence numbers given."""
    spans = decode_done(encode_done(ranges(seqs)))
    assert {s for a, b in spans for s in range(a, b + 1)} == seqs
    assert len(spans) <= len(seqs)


def test_done_frames_scan() -> None:
    """A done file is frames too."""
    data = encode_frame(DONE, 0, 1.0, encode_done([(1, 3), (7, 7)]))
    (frame,) = scan(data).frames
    assert frame.kind == DONE
    assert decode_done(frame.payload) == [(1, 3), (7, 7)]


def hypothesis_given_flat_records():  # type: ignore[no-untyped-def]
    import datetime as dt

    from hypothesis import given
    from hypothesis import strategies as st

    chars = st.characters(exclude_categories=())  # NUL and lone surrogates included
    odd = st.sampled_from(["\x00", "a\ud800", "\udfffb", "\U0001f600", "\ud7ff", "\\u0000"])
    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(chars, max_size=8) | odd
        | st.uuids() | st.datetimes() | st.dates() | st.decimals(allow_nan=False)
        | st.binary(max_size=8) | st.datetimes(timezones=st.just(dt.UTC))
    )  # fmt: skip
    keys = st.text(chars, max_size=6) | odd
    return given(st.dictionaries(keys, scalars, max_size=6))


@hypothesis_given_flat_records()
def test_the_flat_fast_path_writes_what_the_codec_writes(record: dict) -> None:  # type: ignore[type-arg]
    """A dict of plain scalars takes a fast path (the C JSON encoder, made once): its bytes
    must be the tagged codec's, byte for byte (strings with NUL or surrogates included), and
    decode back to the record."""
    import json

    from writebehind.dlq import _codec as tagged
    from writebehind.spool import _codec

    slow = json.dumps(tagged._enc(record, 0), ensure_ascii=True, allow_nan=False,
                      separators=(",", ":")).encode("ascii")  # fmt: skip
    assert _codec.encode_record(record) == slow
    back = _codec.decode_record(slow)
    assert back == record or any(v != v for v in record.values())
