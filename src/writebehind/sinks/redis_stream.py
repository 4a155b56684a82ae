"""``RedisStreamSink``: each batch appended to a Redis stream in one round trip.

The producer half of the stream hand-off (``docs/scaling.md``): producers are ordinary
batchers whose sink is the stream, and flushers on any host read it as a consumer group
with :func:`writebehind.consume_stream`. Each record is one entry with one field, ``r``,
holding the record as the dead-letter stores' tagged JSON (``dlq/_codec.py``: datetimes,
UUIDs, decimals, bytes and tuples round-trip; dataclasses, named tuples and structs arrive
as dicts of the fields the SQL sinks would read from them; never pickle).
"""

from __future__ import annotations

import logging
from typing import Any

from .._errors import ConfigError, PermanentSinkError, RetriableSinkError
from ..dlq._codec import JSON, encode
from ._records import field_names, row_getter
from ._redis import RedisClientSink, RedisSource

__all__ = ["FIELD", "RedisStreamSink", "check_stream_name"]

log = logging.getLogger("writebehind")

FIELD = "r"
"""The one field of each entry: the record as tagged JSON."""

_FULL_RETRY = 0.5  # seconds a producer waits before trying a full stream again

# One step per batch: XADD every record (ARGV[3..]); with mode "check", only if the whole
# batch fits under maxlen (ARGV[2]); with mode "trim", trimming to about maxlen instead
_ADD = """
local mode, maxlen = ARGV[1], ARGV[2]
local n = 0
if mode == 'check' then
  n = redis.call('XLEN', KEYS[1])
  if #ARGV - 2 > tonumber(maxlen) - n then
    return {0, n}
  end
end
for i = 3, #ARGV do
  if mode == 'trim' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'r', ARGV[i])
  else
    redis.call('XADD', KEYS[1], '*', 'r', ARGV[i])
  end
end
return {1, n + #ARGV - 2}
"""


def _as_fields(record: Any) -> Any:
    """A record as the dict of the fields the SQL sinks read from it (``_records``): what
    arrives at the other end is then the row it would have been here (a plain object's
    ``_private`` attributes are not fields). A record of no shape they read goes as is."""
    if type(record) is dict:
        return record
    try:
        names = field_names(record)
    except PermanentSinkError:
        return record
    return dict(zip(names, row_getter(record, names)(record), strict=True))


def check_stream_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 1024:
        raise ConfigError(f"{what}: must be a non-empty string (a Redis key), got {name!r}")
    return name


class RedisStreamSink(RedisClientSink):
    """Append each batch to the Redis stream ``stream`` (``pip install 'writebehind[redis]'``).

    A batch is one round trip: one ``EVALSHA`` of a short Lua script that ``XADD``s each of
    its records, so a batch is in the stream whole or not at all (a script is atomic), and
    *committed* means in the stream. Read it with :func:`writebehind.consume_stream`. (A
    pipeline of ``XADD`` commands is the same round trip, but redis-py spends about 26 us
    of client CPU per command packing it; the script's arguments cost almost nothing.)

    Args:
        redis: a ``redis://`` or ``rediss://`` URL (the sink opens and closes its own
            client; its password never appears in logs, errors or reprs), or a
            ``redis.asyncio.Redis`` client of yours (used as is, never closed).
        stream: the stream's key.
        maxlen: the most entries the stream may hold, or None (no bound). A batch that
            would take the stream past it is not written: the write fails with a
            retriable error (``RetriableSinkError`` with ``retry_after``), so the
            producer's batcher pauses and tries again, its buffer fills, and ``add()``
            blocks or refuses by its ``when_full`` policy until the consumers catch up.
            The length check and the ``XADD`` commands are one atomic step, so producers
            racing for the last room never overfill it. Nothing is trimmed unless you pass
            ``trim=True``.
        trim: with ``maxlen``: trim the oldest entries instead (``XADD MAXLEN ~``), read or
            not. Entries no consumer has read yet are lost that way, silently as far as the
            producers know: only for data you can afford to lose under overload.

    A record the codec cannot carry (a set, a socket) fails its write with
    ``PermanentSinkError``, so the batcher isolates it and dead-letters it, and writes the
    rest.
    """

    def __init__(
        self, redis: Any, *, stream: str, maxlen: int | None = None, trim: bool = False
    ) -> None:
        self.stream = check_stream_name(stream, "stream")
        if maxlen is not None and not (
            isinstance(maxlen, int) and not isinstance(maxlen, bool) and maxlen >= 1
        ):
            raise ConfigError(f"maxlen: must be an integer >= 1 or None, got {maxlen!r}")
        if trim and maxlen is None:
            raise ConfigError("trim: needs maxlen (the length to trim the stream to)")
        self.maxlen = maxlen
        self.trim = bool(trim)
        self._source = RedisSource(redis, "RedisStreamSink")
        self._client: Any = None
        self._script: Any = None
        self.round_trips = 0
        """Round trips that wrote a batch (one per write)."""

    def __repr__(self) -> str:
        bound = "" if self.maxlen is None else f", maxlen={self.maxlen}"
        trim = ", trim=True" if self.trim else ""
        return f"RedisStreamSink({self._source.where!r}, stream={self.stream!r}{bound}{trim})"

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, and check that ``stream`` is a stream (or does not exist yet)."""
        if self._client is None:
            self._client = self._source.connect(f"writebehind-stream-sink-{self.stream}"[:60])
        try:
            kind = await self._client.type(self.stream)
        except Exception as exc:
            await self.close()
            raise self._source.error(exc, "cannot start") from None
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind not in ("stream", "none"):
            await self.close()
            raise ConfigError(
                f"stream: the key {self.stream!r} holds a {kind}, not a stream; name another key"
            )
        self._script = self._client.register_script(_ADD)

    # -- writing ----------------------------------------------------------------------------
    def encode(self, batch: list[Any]) -> list[str]:
        """Each record as tagged JSON; ``PermanentSinkError`` for one the codec cannot carry."""
        texts = []
        for record in batch:
            text, encoding, name = encode(_as_fields(record))
            if encoding != JSON:
                raise PermanentSinkError(
                    f"{self!r}: a {name} record cannot be encoded as tagged JSON (a set, a "
                    f"socket, a cycle?); it is dead-lettered as its repr"
                )
            texts.append(text)
        return texts

    async def write(self, batch: list[Any]) -> None:
        """Append ``batch`` in one round trip (see the class docstring)."""
        if not batch:
            return
        if self._client is None:
            raise RetriableSinkError(f"{self!r} is not started")
        if self.maxlen is not None and not self.trim and len(batch) > self.maxlen:
            # retrying could never help; a permanent error splits the batch until it fits
            raise PermanentSinkError(f"a batch of {len(batch)} is more than maxlen {self.maxlen}")
        texts = self.encode(batch)
        mode = "none" if self.maxlen is None else ("trim" if self.trim else "check")
        try:
            ok, length = await self._script(
                keys=[self.stream], args=[mode, self.maxlen or 0, *texts]
            )
        except Exception as exc:
            raise self._source.error(exc, f"XADD to {self.stream!r}") from None
        self.round_trips += 1
        if not ok:
            raise RetriableSinkError(
                f"{self!r}: the stream holds {length} entries; {len(batch)} more would pass "
                f"maxlen {self.maxlen}. The consumers are behind (or stopped): the batch "
                f"waits and is tried again",
                retry_after=_FULL_RETRY,
            )
