"""What ``consume_stream`` does with the entries it reads (``streams.py``): the reply's
entries, each decoded back into its record (the dead-letter stores' tagged JSON, undone
with a fast ``json`` object hook), an undecodable one as raw dead-letter data and the
dead-lettering of those, whether a read error says the stream or its group is gone, and a
client that reads raw bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from .._deadletter import DeadLetterEntry
from .._events import RecordsDeadLettered
from ..dlq._codec import decode
from ..sinks.redis_stream import FIELD

if TYPE_CHECKING:
    from .._engine import AsyncBatcher
    from ._stream_acks import Acks

__all__ = [
    "bytes_client",
    "dead_letter",
    "entries_of",
    "entry_text",
    "group_gone",
    "message",
    "raw",
    "record_of",
]

log = logging.getLogger("writebehind")


def group_gone(exc: BaseException) -> bool:
    """Whether a read failed because the stream or its group is gone: deleted, or a Redis
    restarted without persistence (``NOGROUP``), or deleted while a read blocked on it
    (``UNBLOCKED``)."""
    first = str(exc).split(" ", 1)[0].upper()
    return first in ("NOGROUP", "UNBLOCKED")


def bytes_client(client: Any) -> Any:
    """For a ``redis.asyncio.Redis`` of the user's that decodes replies
    (``decode_responses=True``): a client of our own on a pool with the same settings that
    does not (to be closed by the caller). An entry written by something else need not be
    UTF-8, and a client that decodes strictly fails the whole read on it, again at every
    restart. None for a client that returns bytes (use it as is)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict) or not kwargs.get("decode_responses"):
        return None
    import redis.asyncio as aioredis

    own = aioredis.ConnectionPool(
        connection_class=pool.connection_class,  # type: ignore[union-attr]
        **{**kwargs, "decode_responses": False},
    )
    return aioredis.Redis.from_pool(own)


def entries_of(reply: Any) -> list[tuple[bytes, Any]]:
    """The entries of an ``XREADGROUP`` reply, RESP2 (a list) or RESP3 (a dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
        return [tuple(e) for s in streams for e in (s[0] if s and isinstance(s[0], list) else s)]
    return [tuple(e) for _name, entries in reply for e in entries]


def record_of(fields: Any) -> Any:
    """An entry's record; raises (any exception) for an entry it cannot decode."""
    text = fields.get(_FIELD_BYTES)
    if text is None:
        text = fields.get(FIELD)
    if text is None:
        raise ValueError(f"the entry has no field {FIELD!r}: not written by RedisStreamSink")
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if '"$map"' in text:  # a user's dict with one $-key: the codec's own exact decoder
        return decode(text)
    try:  # json's C scanner straight away: json.loads builds a decoder per call (2.5x slower)
        record, end = _scan(text, 0)
    except StopIteration:
        record, end = None, -1
    if end != len(text):  # whitespace around it, or not JSON: json's own checks and errors
        return _DECODER.decode(text)
    return record


def _untag(obj: dict[str, Any]) -> Any:
    """The codec's tags undone bottom-up, as ``json`` builds each object (2-3x faster than
    the codec's recursive walk; the same result unless a ``$map`` is present, which
    :func:`_record` leaves to the codec)."""
    if len(obj) != 1:
        return obj
    ((tag, body),) = obj.items()
    if tag[:1] != "$":
        return obj
    if tag == "$obj":
        return body[1]
    if tag == "$tuple":
        return tuple(body)
    if tag == "$pairs":
        return {k: v for k, v in body}
    simple = _SIMPLE_TAGS.get(tag)
    if simple is None:
        raise ValueError(f"unknown tag {tag!r} in a stream entry")
    return simple(body)


_SIMPLE_TAGS: dict[str, Any] = {
    "$dt": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$time": dt.time.fromisoformat,
    "$uuid": uuid.UUID,
    "$dec": decimal.Decimal,
    "$bytes": lambda b: base64.b64decode(b.encode("ascii")),
    "$float": float,
    "$str": "\x00".join,
    "$chars": lambda b: "".join(p if isinstance(p, str) else chr(p) for p in b),
}


_DECODER = json.JSONDecoder(object_hook=_untag)
_scan: Any = _DECODER.scan_once  # type: ignore[attr-defined]  # set in __init__
_FIELD_BYTES = FIELD.encode()


def entry_text(entry_id: Any) -> str:
    """An entry id as text (bytes, or str from a client with ``decode_responses``)."""
    return entry_id.decode(errors="replace") if isinstance(entry_id, bytes) else str(entry_id)


def raw(stream: str, entry_id: Any, fields: Any) -> dict[str, Any]:
    """An undecodable entry as the dead-letter record: its stream, id and raw fields."""
    return {"stream": stream, "id": entry_text(entry_id), "fields": dict(fields)}


def message(entry_id: Any, exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 500:
        text = text[:500] + "..."
    return f"entry {entry_text(entry_id)}: {type(exc).__name__}: {text}"


async def dead_letter(
    into: AsyncBatcher,
    stream: str,
    group: str,
    bad: list[tuple[bytes, Any, BaseException]],
    acks: Acks,
) -> int:
    """Dead-letter entries that could not be added (each with its record, or its raw
    fields) into the batcher's store, acknowledge them, and publish ``RecordsDeadLettered``;
    how many (0 when the store failed: they stay pending, to be claimed again)."""
    store, now = into.dead_letter, time.time()
    entries = [
        DeadLetterEntry(
            record=record,
            error=type(exc).__name__,
            message=message(entry_id, exc),
            sink=f"consume_stream({stream!r}, group={group!r})",
            batcher=into.name,
            attempts=0,
            at=now,
        )
        for entry_id, record, exc in bad
    ]
    if store is None:
        log.error(
            "consume_stream(%r): %d entries could not be added (first: %s) and are "
            "acknowledged; give the batcher a dead_letter= store to keep them",
            stream, len(bad), entries[0].message,
        )  # fmt: skip
    else:
        try:
            await store.put(entries)
        except Exception as exc:
            log.error(
                "consume_stream(%r): the dead-letter store failed (%s); %d entries stay "
                "pending and are claimed again after claim_after",
                stream, type(exc).__name__, len(bad),
            )  # fmt: skip
            return 0
        log.warning(
            "consume_stream(%r): dead-lettered %d entries as they were (first: %s); not in "
            "the batcher's stats(), which counts accepted records; StreamReport.dead_lettered "
            "and a RecordsDeadLettered event (attempts=0) count them",
            stream, len(bad), entries[0].message,
        )  # fmt: skip
    for entry_id, *_ in bad:
        acks.ack_now(entry_id)
    events = into._events  # on the batcher's loop, as every publisher
    if not events.closed:
        kinds: dict[str, int] = {}
        for entry in entries:
            kinds[entry.error] = kinds.get(entry.error, 0) + 1
        for error, count in kinds.items():
            events.publish(RecordsDeadLettered, count=count, error=error, attempts=0)
    return len(bad)
