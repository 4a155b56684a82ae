"""What the Redis sinks and ``consume_stream`` share: the client (from a URL or yours),
the lazy import of redis-py, and its errors mapped into writebehind's tree, secrets
scrubbed.

redis-py is imported when a sink starts (or ``consume_stream`` runs), never when
writebehind is imported. A client made from a URL is a ``redis.asyncio.Redis`` made on the
event loop that uses it, with short timeouts and no retries of its own (the batcher
retries, with backoff); the caller's client is used as is and never closed.
"""

from __future__ import annotations

import inspect
from typing import Any

from .._errors import ConfigError, PermanentSinkError, RetriableSinkError, SinkMisconfigured
from .._redact import describe, redact_dsn, secrets_of

__all__ = ["RedisSource", "import_redis", "redis_error"]

_TIMEOUT = 5.0  # seconds: socket timeouts of a client made from a URL

# a ResponseError that says the server is busy or out of memory, not that a record is bad
_TRANSIENT = ("OOM", "BUSY", "LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY")


def import_redis(who: str) -> Any:
    """``redis.asyncio`` (redis-py), or ``ConfigError`` naming the extra."""
    try:
        import redis.asyncio
    except ImportError as exc:
        raise ConfigError(f"{who} needs redis-py: pip install 'writebehind[redis]'") from exc
    return redis.asyncio


class RedisSource:
    """A ``redis://`` URL or a ``redis.asyncio.Redis`` client, checked when a sink is built;
    ``connect()`` gives the client to use on the running loop."""

    def __init__(self, source: Any, who: str, *, timeout: float = _TIMEOUT) -> None:
        self.who = who
        self.timeout = timeout
        if isinstance(source, str):
            self.url: str | None = source
            self.secrets = secrets_of(source)
            self.where = redact_dsn(source)
            try:
                import_redis(who).connection.parse_url(source)
            except ValueError as exc:
                why = describe(exc, self.secrets, withhold=bool(self.secrets))
                raise ConfigError(f"{who}: not a Redis URL ({why})") from None
            self.client: Any = None
        elif inspect.iscoroutinefunction(getattr(source, "execute_command", None)):
            self.url, self.secrets, self.where, self.client = None, (), "<client>", source
        elif callable(getattr(source, "execute_command", None)):
            raise ConfigError(
                f"{who}: a sync redis.Redis client cannot be used on the event loop; pass a "
                f"redis:// URL or a redis.asyncio.Redis client"
            )
        else:
            raise ConfigError(
                f"{who}: must be a redis:// URL or a redis.asyncio.Redis client, got "
                f"{type(source).__name__}"
            )

    @property
    def owned(self) -> bool:
        """Whether the client is made (and closed) by us: from a URL."""
        return self.url is not None

    def connect(self, name: str) -> Any:
        """A client for the running loop: a new one from the URL (no I/O yet), or yours."""
        if self.url is None:
            return self.client
        aioredis = import_redis(self.who)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=name,
        )

    async def release(self, client: Any) -> None:
        """At a sink's close: close ``client`` if we made it (yours is left open)."""
        if client is not None and self.owned:
            closing = getattr(client, "aclose", None) or client.close
            await closing()

    def error(self, exc: BaseException, what: str) -> Exception:
        """``exc`` (a redis-py error, an ``OSError``) as a ``SinkError``, secrets scrubbed."""
        return redis_error(exc, self.secrets, f"{self.who} at {self.where}: {what}")


def redis_error(exc: BaseException, secrets: tuple[str, ...], where: str) -> Exception:
    """A redis-py error as a retriable or permanent ``SinkError`` (secrets scrubbed)."""
    import redis.exceptions as rx

    text = f"{where}: {describe(exc, secrets)}"
    if isinstance(exc, rx.AuthenticationError | rx.NoPermissionError):
        return SinkMisconfigured(text)
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError | TimeoutError):
        return RetriableSinkError(text)
    if isinstance(exc, rx.ResponseError):
        first = str(exc).split(" ", 1)[0].upper()
        if first in _TRANSIENT or isinstance(exc, rx.BusyLoadingError | rx.ReadOnlyError):
            return RetriableSinkError(text)
        if first in ("NOPERM", "WRONGPASS", "NOAUTH", "WRONGTYPE"):
            return SinkMisconfigured(text)
        return PermanentSinkError(text)
    if isinstance(exc, rx.RedisError):
        return RetriableSinkError(text)
    return PermanentSinkError(text)


class RedisClientSink:
    """What both Redis sinks share: their client (``_client``, made at start from
    ``_source``), the script they run (``_script``), closing and forking."""

    _source: RedisSource
    _client: Any = None
    _script: Any = None

    async def close(self) -> None:
        """Close the sink's own client (yours is left open)."""
        client, self._client = self._client, None
        self._script = None
        await self._source.release(client)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's client without closing it."""
        if self._source.owned:
            self._client = None
        self._script = None
