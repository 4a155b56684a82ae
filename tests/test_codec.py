"""The dead-letter record codec (tagged JSON, never pickle): every supported type round-trips,
objects become dicts of their fields, and what cannot be encoded is kept as its repr."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import os
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from writebehind.dlq import RecordNotReplayable
from writebehind.dlq._codec import JSON, REPR, decode, encode, storable_text


def round_trip(value: Any) -> Any:
    text, encoding, _ = encode(value)
    assert encoding == JSON, text
    return decode(text)


# -- the codec -------------------------------------------------------------------------
@dataclasses.dataclass
class Heartbeat:
    id: uuid.UUID
    at: dt.datetime


class Plain:
    def __init__(self) -> None:
        self.name = "x"
        self.when = dt.date(2024, 5, 1)


class StructLike:
    """Looks like a msgspec.Struct: slots and ``__struct_fields__``."""

    __slots__ = ("a", "b")
    __struct_fields__ = ("a", "b")

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


class Color(enum.Enum):
    RED = "red"


AWARE = dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
VALUES = [
    {"a": 1, "b": [1, 2.5, None, True, False, "s"]},
    (1, "two", (3.0,)),
    "text",
    "nul\x00inside",
    12345678901234567890123,
    -0.5,
    1e300,
    5e-324,
    True,
    None,
    AWARE,
    dt.datetime(2024, 5, 1, 12, 30, 15, 123456),
    dt.date(2024, 5, 1),
    dt.time(12, 30, 15, 5),
    dt.time(12, 30, tzinfo=dt.UTC),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("1.10"),
    decimal.Decimal("-1E+30"),
    b"\x00\xffbytes",
    {1: "int key", (1, 2): "tuple key", None: 0},
    {"nested": {"t": (AWARE, [b"x"])}},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_codec_round_trips_each_type(value: Any) -> None:
    """Every supported type comes back equal and of the same type."""
    back = round_trip(value)
    assert back == value
    assert type(back) is type(value)


def test_codec_keeps_special_floats() -> None:
    """NaN, infinities and negative zero survive (JSON and jsonb would not keep them)."""
    back = round_trip([math.nan, math.inf, -math.inf, -0.0])
    assert math.isnan(back[0])
    assert back[1:3] == [math.inf, -math.inf]
    assert back[3] == 0.0
    assert math.copysign(1, back[3]) < 0


def test_codec_bytearray_comes_back_as_bytes() -> None:
    """A bytearray is stored as bytes."""
    assert round_trip(bytearray(b"ab")) == b"ab"


@pytest.mark.parametrize(
    "value",
    [
        {"$dt": "2024-01-01"},
        {"$map": {"a": 1}},
        {"$obj": ["x", {}]},
        {"$unknown": 1},
        {"$dt": "x", "other": 2},
        [{"$tuple": [1]}],
        {"k": {"$bytes": "not base64!"}},
    ],
)
def test_codec_escapes_user_dicts_that_look_like_tags(value: Any) -> None:
    """A user's dict whose keys look like tags comes back as the same dict."""
    assert round_trip(value) == value


def test_codec_objects_become_dicts_with_their_type_recorded() -> None:
    """Dataclasses, objects with __dict__ and struct-likes decode to dicts of their fields,
    and the stored type name says what they were."""
    hb = Heartbeat(uuid.uuid4(), AWARE)
    text, encoding, name = encode(hb)
    assert (encoding, name) == (JSON, f"{__name__}.Heartbeat")
    assert decode(text) == {"id": hb.id, "at": AWARE}
    assert round_trip(Plain()) == {"name": "x", "when": dt.date(2024, 5, 1)}
    assert encode(StructLike(1, 2))[2] == f"{__name__}.StructLike"
    assert round_trip([StructLike(1, (2,))]) == [{"a": 1, "b": (2,)}]
    assert round_trip({"c": Color.RED}) == {"c": "red"}


def test_codec_stores_unencodable_records_as_repr() -> None:
    """A record the codec cannot carry is kept as its repr, and refused on decode."""
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    for record in ({1, 2}, {"s": {3}}, cyclic, object()):
        text, encoding, _ = encode(record)
        assert encoding == REPR
        with pytest.raises(RecordNotReplayable, match="repr"):
            decode(text, encoding)


def test_codec_survives_a_broken_repr() -> None:
    """Even a record whose repr raises is stored (as a placeholder)."""

    class Bad:
        __slots__ = ()

        def __repr__(self) -> str:
            raise RuntimeError("no")

    text, encoding, name = encode(Bad())
    assert encoding == REPR
    assert "Bad" in text
    assert name.endswith("Bad")


# every character (nothing excluded), with lone surrogates and NUL drawn often: left to
# chance, characters() draws a surrogate in about 1 text of 700 (and a union of characters()
# strategies is merged into one, so the surrogates come from integers instead)
ANY_CHARACTER = (
    st.characters(exclude_categories=())
    | st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)
    | st.just("\x00")
)
ANY_TEXT = st.text(ANY_CHARACTER)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | ANY_TEXT
    | st.binary()
    | st.datetimes()
    | st.datetimes(timezones=st.just(dt.UTC))
    | st.dates()
    | st.times()
    | st.uuids()
    | st.decimals(allow_nan=False)
)
_keys = ANY_TEXT | st.integers() | st.sampled_from(["$dt", "$map", "$tuple", "$obj", "$x"])
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(_keys, inner, max_size=4)
    ),
    max_leaves=20,
)


def storable(text: str) -> None:
    """What every store takes: UTF-8 text without NUL, and JSON without an escaped NUL."""
    text.encode("utf-8")
    assert "\x00" not in text
    assert "\\u0000" not in text


@given(_values)
def test_codec_round_trip_property(value: Any) -> None:
    """Any nesting of the supported types round-trips, and its JSON is storable."""
    text, _, _ = encode(value)
    storable(text)
    assert round_trip(value) == value


FILE_NAME = os.fsdecode(b"report-\xe9t\xe9.txt")  # a lone surrogate per byte that is not UTF-8


@given(ANY_TEXT, st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=4))
def test_codec_round_trips_any_text(text: str, mapping: dict[str, str]) -> None:
    """Any str, lone surrogates and NUL included, round-trips exactly as a value and as a
    dict key, and is stored as UTF-8 JSON that jsonb takes (no NUL, no surrogate)."""
    for value in (text, mapping, {"path": text}, [text, (text,)]):
        stored, encoding, _ = encode(value)
        assert encoding == JSON
        storable(stored)
        assert decode(stored) == value


def test_codec_lone_surrogates_in_a_file_name() -> None:
    """The file name from the report (os.fsdecode of Latin-1 bytes) comes back as it was."""
    record = {"id": 1, "path": FILE_NAME, FILE_NAME: "as a key", "nul": "a\x00b"}
    text, encoding, _ = encode(record)
    assert encoding == JSON
    storable(text)
    assert decode(text) == record
    assert os.fsencode(decode(text)["path"]) == b"report-\xe9t\xe9.txt"


def test_codec_still_reads_the_older_nul_tag() -> None:
    """Entries written before $chars (NUL strings as {"$str": parts}) still decode."""
    assert decode('{"$str": ["a", "b"]}') == "a\x00b"


def test_storable_text_escapes_what_stores_refuse() -> None:
    """Text kept beside the record (messages, names) has NUL and surrogates escaped."""
    assert storable_text(f"bad {FILE_NAME}\x00!") == "bad report-\\udce9t\\udce9.txt\\x00!"
    assert storable_text("plain é") == "plain é"


def test_codec_repr_of_an_unencodable_record_is_storable() -> None:
    """A record kept as its repr is storable even when its __repr__ returns a NUL or a lone
    surrogate."""

    class Odd:
        def __repr__(self) -> str:
            return f"Odd({FILE_NAME}\x00)"

    text, encoding, _ = encode({"o": Odd(), "s": {1}})
    assert encoding == REPR
    storable(text)


class Slotted:
    __slots__ = ("__secret", "id", "unset")

    def __init__(self, id: int) -> None:
        self.id = id
        self.__secret = FILE_NAME


class SlottedChild(Slotted):
    __slots__ = ("v",)

    def __init__(self, id: int, v: Any) -> None:
        super().__init__(id)
        self.v = v


class SlottedWithDict(Slotted):
    def __init__(self, id: int) -> None:
        super().__init__(id)
        self.extra = AWARE


def test_codec_encodes_slotted_records_as_objects() -> None:
    """A record with __slots__ and no __dict__ is kept as an object (replayable), its slots
    read along the MRO under their declared names; unset slots are left out; a __dict__
    beside the slots is read too."""
    text, encoding, name = encode(SlottedChild(7, (1, "x")))
    assert (encoding, name) == (JSON, f"{__name__}.SlottedChild")
    assert decode(text) == {"id": 7, "__secret": FILE_NAME, "v": (1, "x")}
    assert round_trip([Slotted(1)]) == [{"id": 1, "__secret": FILE_NAME}]
    assert round_trip(SlottedWithDict(2)) == {"id": 2, "__secret": FILE_NAME, "extra": AWARE}


def test_codec_keeps_standard_library_slotted_objects_as_repr() -> None:
    """Objects whose slots a standard-library class declares (a socket) are not records:
    they are kept as their repr, as before."""
    import socket

    with socket.socket() as sock:
        assert encode({"s": sock})[1] == REPR


class _Name(str):
    pass


class _Count(int):
    pass


class _Rec(dict):  # type: ignore[type-arg]
    pass


def test_subclasses_of_plain_types_keep_their_contents() -> None:
    """Dict subclasses, named tuples and str/int/float/list subclasses keep their contents
    (as the plain type), never an empty object."""
    import collections

    point = collections.namedtuple("point", "x y")
    for record, expected in [
        (collections.OrderedDict(id=1, v="x"), {"id": 1, "v": "x"}),
        (collections.Counter(a=2), {"a": 2}),
        (_Rec(id=3), {"id": 3}),
        (point(1, 2), {"x": 1, "y": 2}),
        ({"name": _Name("bob"), "n": _Count(7)}, {"name": "bob", "n": 7}),
        ([_Name("a"), (_Count(1),)], ["a", (1,)]),
    ]:
        text, encoding, _ = encode(record)
        assert encoding == JSON
        assert decode(text) == expected
        assert type(decode(text)) is type(expected)
