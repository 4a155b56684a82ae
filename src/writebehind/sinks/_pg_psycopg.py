"""``PostgresSink``'s psycopg path, its connections: a ``psycopg_pool.AsyncConnectionPool`` of
the user's, or :class:`Connections`, the sink's own small set (connecting on demand, so a
server that is down fails the write at once instead of waiting in a pool's queue); and what
a failed or cancelled write does to its connection. A cancelled write has its connection
closed and its backend ended from another connection, as on the asyncpg path. What a write
sends is ``_pg_copy.CopyPath``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ._pg_copy import CopyPath, Stale, import_psycopg

__all__ = ["Connections", "PsycopgDriver", "is_psycopg_pool", "terminate_backend"]

log = logging.getLogger("writebehind")

_REAP_TIMEOUT = 1.0
_CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout for the sink's own connections


def is_psycopg_pool(obj: Any) -> bool:
    """Whether ``obj`` is a ``psycopg_pool`` pool (async), without importing psycopg_pool."""
    return any(c.__module__.startswith("psycopg_pool") for c in type(obj).__mro__) and hasattr(
        obj, "connection"
    )


class Connections:
    """The sink's own psycopg connections (autocommit), at most ``size`` at once: one is
    made when a write finds none idle, and a connection that saw an error is closed, not
    kept."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn, self.size = dsn, size
        self.idle: list[Any] = []
        self.slots = asyncio.Semaphore(size)
        self.closed = False

    async def open_one(self) -> Any:
        psycopg = import_psycopg()
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT
        )

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        async with self.slots:
            conn = self.idle.pop() if self.idle else await self.open_one()
            try:
                yield conn
            except BaseException:
                if not conn.closed and conn.info.transaction_status != 0:  # not IDLE
                    conn.pgconn.finish()
                raise
            finally:
                if self.closed or conn.closed:
                    if not conn.closed:
                        await conn.close()
                else:
                    self.idle.append(conn)

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()

    def terminate(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.pgconn.finish()

    def forget(self) -> list[Any]:
        """After fork: the parent's connections, to be kept (never finalised) by the caller."""
        idle, self.idle = self.idle, []
        return idle


async def terminate_backend(source: Any, pid: int, markers: tuple[str, str]) -> None:
    """End backend ``pid`` if it is ours: this role's, its statement naming one of
    ``markers`` (the sink's table, its staging table), so a pid a pooler made up ends no
    stranger."""
    sql = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s "
        "AND usename = current_user AND (position(%s in query) > 0 OR position(%s in query) > 0)"
    )
    try:
        async with asyncio.timeout(_REAP_TIMEOUT):
            if isinstance(source, Connections):
                conn = await source.open_one()
                try:
                    await conn.execute(sql, (pid, *markers))
                finally:
                    await conn.close()
            else:
                async with source.connection(timeout=_REAP_TIMEOUT) as conn:
                    await conn.execute(sql, (pid, *markers))
    except Exception as exc:  # the server is gone too, or the pool closed: nothing to end
        log.debug("PostgresSink: could not end backend %d: %s", pid, type(exc).__name__)


class PsycopgDriver:
    """Where the psycopg path gets its connections (the user's pool, or :class:`Connections`
    of the sink's own) and what it does when a write fails or is cancelled."""

    def __init__(self, path: CopyPath, *, dsn: str | None, pool: Any, pool_size: int) -> None:
        self.path = path
        self.dsn, self.user_pool, self.pool_size = dsn, pool, pool_size
        self.own: Connections | None = None
        self.reapers: set[asyncio.Task[None]] = set()

    @property
    def source(self) -> Any:
        return self.user_pool if self.user_pool is not None else self.own

    async def start(self) -> tuple[list[tuple[Any, ...]], list[set[str]]]:
        import_psycopg()
        if self.user_pool is None:
            assert self.dsn is not None
            self.own = Connections(self.dsn, self.pool_size)
        async with self._connection() as conn:
            return await self.path.read_catalog(conn)

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.user_pool is not None:
            return self.user_pool.connection()  # type: ignore[no-any-return]
        assert self.own is not None
        return self.own.connection()

    async def write(self, groups: dict[tuple[str, ...], list[Any]]) -> tuple[int, Stale]:
        """Statements run, and (with ``report``) each group's rows the merge skipped."""
        before = self.path.statements
        async with self._connection() as conn:
            pid = conn.info.backend_pid
            try:
                stale = await self.path.write(conn, groups)
            except BaseException as exc:
                self.path.forget(conn)
                if isinstance(exc, asyncio.CancelledError):
                    self._abandon(conn, pid)
                elif not conn.closed and conn.info.transaction_status != 0:  # not IDLE
                    conn.pgconn.finish()  # never hand a half-broken connection back
                raise
        return self.path.statements - before, stale

    def _abandon(self, conn: Any, pid: int) -> None:
        """A cancelled write (``write_timeout``, the close deadline): close its connection
        now and end its backend from another one, in the background, so that a statement
        stuck on a lock neither lingers nor commits late."""
        if not conn.closed:
            conn.pgconn.finish()
        source = self.source
        if source is None or not pid:
            return
        task = asyncio.get_running_loop().create_task(
            terminate_backend(source, pid, (self.path.target, self.path.stage))
        )
        self.reapers.add(task)
        task.add_done_callback(self.reapers.discard)

    async def close(self, timeout: float) -> None:
        reapers = set(self.reapers)
        try:
            if reapers:
                await asyncio.wait(reapers, timeout=_REAP_TIMEOUT)
            if self.own is not None:
                try:
                    async with asyncio.timeout(timeout):
                        await self.own.close()
                except TimeoutError:
                    self.own.terminate()
        except BaseException:
            if self.own is not None:
                self.own.terminate()
            raise
        finally:
            for task in reapers:
                task.cancel()

    def after_fork(self) -> list[Any]:
        """The parent's connections, which the child must neither use nor finalise."""
        self.reapers = set()
        own, self.own = self.own, None
        return own.forget() if own is not None else []
