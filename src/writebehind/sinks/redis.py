"""``RedisSink``: newest wins in Redis: one Lua script per batch writes each record only if
its version is at least the one stored.

Three shapes (``kind``):

- ``"hash"``: one hash per record key, ``{prefix}{key}``, holding the record's fields (the
  newest record replaces the hash whole) and its version, as a number, in the field
  ``_wb_version``.
- ``"string"``: one string per record key, ``{prefix}{key}``, holding the record as tagged
  JSON (the dead-letter stores' codec), and its version in ``{prefix}{key}:version`` (so a
  record whose key ends in ``:version`` is refused: it would overwrite another's version).
- ``"zset"``: one sorted set, ``name``, whose members are the record keys and whose scores
  are their versions (a "last seen" index: the record's other fields are not stored).

Versions are compared as numbers by the script, so they must be numbers, datetimes or
dates: ``int`` (within +-2**53, where a double is exact), ``float`` (finite),
``Decimal`` (as a float, if that float gives the same number back: not
``Decimal("1.00000000000000001")``), ``datetime`` (microseconds since the epoch, within
+-2**53: about the years 1685 to 2255; a naive one is taken as UTC), ``date`` (its
midnight). Another kind is refused with ``PermanentSinkError`` (the
record is isolated and dead-lettered, the others written), and so is a record whose key
holds another type (``WRONGTYPE``: a string where its hash goes). An equal version
overwrites, as in the SQL sinks (a replay writes identical data).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from typing import Any

from .._errors import ConfigError, PermanentSinkError, RecordError, RetriableSinkError
from .._keys import make_getter
from ..dlq._codec import JSON, encode
from ._records import field_names, row_getter
from ._redis import RedisClientSink, RedisSource

__all__ = ["VERSION_FIELD", "RedisSink", "version_number"]

VERSION_FIELD = "_wb_version"
"""The hash field (``kind="hash"``) holding the record's version as a number."""

_KINDS = ("hash", "string", "zset")
_EXACT = 2**53
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# ARGV: ttl in ms (0: none), then per record: version, field count, field, value, ...
_HASH = """
local ttl = tonumber(ARGV[1])
local j = 2
local out = {}
for i, key in ipairs(KEYS) do
  local v = ARGV[j]
  local n = tonumber(ARGV[j + 1])
  local cur = redis.call('HGET', key, '%s')
  if (not cur) or tonumber(v) >= tonumber(cur) then
    redis.call('DEL', key)
    redis.call('HSET', key, '%s', v)
    local args = {}
    for k = 0, n - 1 do
      args[#args + 1] = ARGV[j + 2 + 2 * k]
      args[#args + 1] = ARGV[j + 3 + 2 * k]
      if #args >= 1000 then  -- unpack() takes a few thousand values at most
        redis.call('HSET', key, unpack(args))
        args = {}
      end
    end
    if #args > 0 then redis.call('HSET', key, unpack(args)) end
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    out[i] = 1
  else
    out[i] = 0
  end
  j = j + 2 + 2 * n
end
return out
""".replace("%s", VERSION_FIELD)

# KEYS: value key, version key, per record; ARGV: ttl in ms, then version, value per record
_STRING = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local key, vkey = KEYS[2 * i - 1], KEYS[2 * i]
  local v = ARGV[2 * i]
  local cur = redis.call('GET', vkey)
  if (not cur) or tonumber(v) >= tonumber(cur) then
    if ttl > 0 then
      redis.call('SET', key, ARGV[2 * i + 1], 'PX', ttl)
      redis.call('SET', vkey, v, 'PX', ttl)
    else
      redis.call('SET', key, ARGV[2 * i + 1])
      redis.call('SET', vkey, v)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS[1]: the sorted set; ARGV: ttl in ms, then version, member per record
_ZSET = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, (#ARGV - 1) / 2 do
  local v, m = ARGV[2 * i], ARGV[2 * i + 1]
  local cur = redis.call('ZSCORE', KEYS[1], m)
  if (not cur) or tonumber(v) >= tonumber(cur) then
    redis.call('ZADD', KEYS[1], v, m)
    out[i] = 1
  else
    out[i] = 0
  end
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return out
"""

_SCRIPTS = {"hash": _HASH, "string": _STRING, "zset": _ZSET}


def version_number(v: Any) -> str:
    """``v`` as the number the script compares (as text); ``PermanentSinkError`` for a
    version it cannot order exactly."""
    t = type(v)
    if t is int:
        if -_EXACT <= v <= _EXACT:
            return str(v)
        raise PermanentSinkError(f"version {v} is beyond +-2**53: Lua compares doubles")
    if t is float:
        if math.isfinite(v):
            return repr(v)
        raise PermanentSinkError(f"version {v!r} orders against nothing")
    if isinstance(v, dt.datetime):  # microseconds: within +-2**53, about 1685 to 2255
        aware = v if v.tzinfo is not None else v.replace(tzinfo=dt.UTC)
        return version_number((aware - _EPOCH) // dt.timedelta(microseconds=1))
    if isinstance(v, dt.date):
        return version_number(dt.datetime(v.year, v.month, v.day))
    if isinstance(v, decimal.Decimal):
        f = float(v)
        if math.isfinite(f) and decimal.Decimal(repr(f)) == v:
            return repr(f)
        raise PermanentSinkError(
            f"version {v} has more digits than a double holds: Lua compares doubles"
        )
    if isinstance(v, int) and not isinstance(v, bool):  # IntEnum, int subclasses
        return version_number(int(v))
    raise PermanentSinkError(
        f"version must be a number, a datetime or a date for RedisSink, got {t.__name__}"
    )


def _text(value: Any) -> str | bytes:
    """A field value as Redis stores it."""
    t = type(value)
    if t is str or t is bytes:
        return value  # type: ignore[no-any-return]
    if t is bool:
        return "1" if value else "0"
    if t is int:
        return str(value)
    if t is float:
        return repr(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return _text(value.value)
    text, encoding, name = encode(value)
    if encoding != JSON:
        raise PermanentSinkError(f"a {name} value cannot be stored in Redis")
    return text


class RedisSink(RedisClientSink):
    """Write each record to Redis only if its version is newer than (or equal to) the one
    stored, whichever process wrote that (``pip install 'writebehind[redis]'``).

    A batch is one round trip: one ``EVALSHA`` of the kind's Lua script, which checks and
    writes every record of the batch in one atomic step. ``written`` and ``refused`` count
    the records that landed and those an equal-or-newer stored version kept out (those are
    still *committed*: newest wins).

    Args:
        redis: a ``redis://`` URL (the sink's own client) or a ``redis.asyncio.Redis`` of
            yours (never closed by the sink). The password never appears in logs or errors.
        kind: ``"hash"``, ``"string"`` or ``"zset"`` (see the module docstring).
        key: the record's field (or tuple of fields, joined with ``:``) naming its Redis
            key (``hash``, ``string``) or its member (``zset``).
        version: the record's field that orders records with one key.
        prefix: put before each key (``hash``, ``string``), e.g. ``"agent:"``.
        name: the sorted set's key (``zset`` only, required there).
        ttl: seconds each written key lives (``hash``, ``string``: each record's key; ``zset``:
            the set), or None.
    """

    def __init__(
        self,
        redis: Any,
        *,
        kind: str = "hash",
        key: str | tuple[str, ...],
        version: str,
        prefix: str = "",
        name: str | None = None,
        ttl: float | None = None,
    ) -> None:
        if kind not in _KINDS:
            raise ConfigError(f"kind: must be one of {', '.join(_KINDS)}, got {kind!r}")
        keys = (key,) if isinstance(key, str) else key
        if not (isinstance(keys, tuple) and keys and all(isinstance(k, str) and k for k in keys)):
            raise ConfigError(f"key: must be a field name or a tuple of them, got {key!r}")
        if not (isinstance(version, str) and version):
            raise ConfigError(f"version: must be a field name, got {version!r}")
        if not isinstance(prefix, str):
            raise ConfigError(f"prefix: must be a string, got {prefix!r}")
        if kind == "zset":
            if not (isinstance(name, str) and name):
                raise ConfigError("name: kind='zset' needs the sorted set's key as name=")
        elif name is not None:
            raise ConfigError(f"name: only for kind='zset' (kind {kind!r} writes {prefix}<key>)")
        if ttl is not None and not (
            isinstance(ttl, int | float) and not isinstance(ttl, bool) and 0 < ttl < math.inf
        ):
            raise ConfigError(f"ttl: must be a positive number of seconds or None, got {ttl!r}")
        self.kind, self.key, self.version = kind, keys, version
        self.prefix, self.name, self.ttl = prefix, name, ttl
        self._ttl_ms = 0 if ttl is None else max(1, round(ttl * 1000))
        self._get_key = make_getter(keys if len(keys) > 1 else keys[0], "key")
        self._get_version = make_getter(version, "version")
        self._source = RedisSource(redis, "RedisSink")
        self._client: Any = None
        self._script: Any = None
        self.written = 0
        self.refused = 0

    def __repr__(self) -> str:
        where = self.name if self.kind == "zset" else f"{self.prefix}<key>"
        return f"RedisSink({self._source.where!r}, kind={self.kind!r}, {where!r})"

    async def start(self) -> None:
        """Connect and load the script (one round trip; a Redis that does not answer is a
        retriable error raised here)."""
        if self._client is None:
            self._client = self._source.connect(f"writebehind-redis-sink-{self.kind}")
        self._script = self._client.register_script(_SCRIPTS[self.kind])
        try:
            await self._client.script_load(_SCRIPTS[self.kind])
        except Exception as exc:
            await self.close()
            raise self._source.error(exc, "cannot start") from None

    def _member(self, record: Any) -> str:
        assert self._get_key is not None
        try:
            k = self._get_key(record)
        except RecordError as exc:
            raise PermanentSinkError(str(exc)) from None
        parts = k if isinstance(k, tuple) else (k,)
        return ":".join(str(_text(p) if not isinstance(p, bytes) else p.decode()) for p in parts)

    def _version(self, record: Any) -> str:
        assert self._get_version is not None
        try:
            return version_number(self._get_version(record))
        except RecordError as exc:
            raise PermanentSinkError(str(exc)) from None

    def _arguments(self, batch: list[Any]) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = [self._ttl_ms]
        if self.kind == "zset":
            assert self.name is not None
            keys.append(self.name)
            for record in batch:
                args += (self._version(record), self._member(record))
            return keys, args
        for record in batch:
            key = self.prefix + self._member(record)
            v = self._version(record)
            if self.kind == "string":
                if key.endswith(":version"):
                    raise PermanentSinkError(
                        f"the key {key!r} ends in ':version', the name of another key's version"
                    )
                text, encoding, type_name = encode(record)
                if encoding != JSON:
                    raise PermanentSinkError(f"a {type_name} record cannot be stored as JSON")
                keys += (key, key + ":version")
                args += (v, text)
                continue
            names = field_names(record)
            if VERSION_FIELD in names:
                raise PermanentSinkError(f"a record has a field {VERSION_FIELD!r}, the sink's own")
            values = row_getter(record, names)(record)
            pairs = [(n, _text(x)) for n, x in zip(names, values, strict=True) if x is not None]
            keys.append(key)
            args += (v, len(pairs))
            for n, x in pairs:
                args += (n, x)
        return keys, args

    async def write(self, batch: list[Any]) -> None:
        """Write ``batch`` in one script call: each record only if not older than stored."""
        if not batch:
            return
        if self._client is None or self._script is None:
            raise RetriableSinkError(f"{self!r} is not started")
        try:
            keys, args = self._arguments(batch)
        except PermanentSinkError as exc:
            raise PermanentSinkError(f"{self!r}: {exc}") from None
        try:
            out = await self._script(keys=keys, args=args)
        except Exception as exc:
            error = self._source.error(exc, "the newest-wins script")
            if self.kind != "zset" and "WRONGTYPE" in str(exc):
                # one record's key holds another type: a permanent error splits the batch
                # until that record is alone and dead-lettered (the rest is rewritten:
                # harmless, newest wins)
                error = PermanentSinkError(str(error))
            raise error from None
        landed = sum(int(x) for x in out)
        self.written += landed
        self.refused += len(out) - landed
