"""How PostgresSink connects: libpq key=value DSNs, the driver's connect options (PgBouncer's
``statement_cache_size=0`` end to end), against the real PostgreSQL where marked."""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from typing import Any

import asyncpg
import pytest

import writebehind as wb
from writebehind.sinks._pg_connect import (
    OPTIONS,
    SINK_OWNED,
    asyncpg_dsn,
    parse_conninfo,
)

from .pg import DSN


def _key_value_dsn(**extra: str) -> str:
    """The test server as a libpq key=value DSN."""
    rest = DSN.split("://", 1)[1]
    user, hostport_db = rest.split("@", 1)
    hostport, db = hostport_db.split("/", 1)
    host, port = hostport.split(":")
    parts = [f"host={host}", f"port={port}", f"user={user}", f"dbname={db}"]
    return " ".join(parts + [f"{k}={v}" for k, v in extra.items()])


# -- libpq's key=value format -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("dsn", "pairs"),
    [
        ("host=db user=app dbname=prod", [("host", "db"), ("user", "app"), ("dbname", "prod")]),
        ("  host = db\tport=5432\n", [("host", "db"), ("port", "5432")]),
        ("password='a b\\' c\\\\d' user=u", [("password", "a b' c\\d"), ("user", "u")]),
        ("password=a\\ b user=u", [("password", "a b"), ("user", "u")]),
        ("password='' user=u", [("password", ""), ("user", "u")]),
        ("application_name=it's", [("application_name", "it's")]),
        ("", []),
    ],
)
def test_key_value_dsns_parse_by_libpq_rules(dsn: str, pairs: list[tuple[str, str]]) -> None:
    """Pairs split on whitespace, spaces around '=', single-quoted values with \\' and \\\\
    escapes, bare values with backslash escapes, quotes inside a bare value kept."""
    assert parse_conninfo(dsn) == pairs


def test_key_value_dsns_become_the_url_asyncpg_reads() -> None:
    """Every option travels percent-encoded in the URL's query; connect_timeout becomes
    asyncpg's timeout; fallback_application_name fills in application_name."""
    url, kwargs = asyncpg_dsn(
        "host=db port=6432 user=app password='p@ss w/rd' dbname=prod sslmode=require "
        "connect_timeout=7 fallback_application_name=svc options='-c search_path=x'"
    )
    assert url == (
        "postgresql://?host=db&port=6432&user=app&password=p%40ss%20w%2Frd&dbname=prod"
        "&sslmode=require&options=-c%20search_path%3Dx&application_name=svc"
    )
    assert kwargs == {"timeout": 7.0}
    assert asyncpg_dsn("postgresql://u@h/db?x=1") == ("postgresql://u@h/db?x=1", {})


@pytest.mark.parametrize(
    ("dsn", "match"),
    [
        ("host=db keepalives=1", "'keepalives' has no equivalent in asyncpg"),
        ("host=db dbnmae=x", "'dbnmae' is not a libpq connection option .*'dbname'"),
        ("host=db password='Sekr3t-unterminated", "'password' has no closing quote"),
        ("host=db Sekr3t-word", "a word after 'host' has no '='"),
        ("host=db connect_timeout=soon", "connect_timeout must be a number"),
    ],
)
def test_bad_key_value_dsns_are_config_errors_that_quote_no_password(dsn: str, match: str) -> None:
    """A key asyncpg cannot honour, a misspelt key or a malformed DSN is a ConfigError when
    the sink is made, naming the key and never quoting the password."""
    with pytest.raises(wb.ConfigError, match=match) as info:
        wb.PostgresSink(dsn, table="t")
    assert "Sekr3t" not in str(info.value)


# -- connect options -----------------------------------------------------------------------------
def test_the_known_options_are_what_the_installed_asyncpg_takes() -> None:
    """connect_kwargs accepts exactly asyncpg.connect()'s keywords (but dsn and loop) and the
    pool options the sink does not set itself: a newer asyncpg's option fails this test."""
    connect = set(inspect.signature(asyncpg.connect).parameters) - {"dsn", "loop"}
    pool = set(inspect.signature(asyncpg.create_pool).parameters) - {"dsn", "connect_kwargs"}
    assert connect | (pool - set(SINK_OWNED) - {"connection_class", "record_class"}) == OPTIONS


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"statement_cache_sise": 0},
            "'statement_cache_sise' is not an option.*'statement_cache_size'",
        ),
        ({"max_size": 10}, "'max_size' is set by the sink; use pool_size="),
        ({"reset": None}, "'reset' is set by the sink"),
        (["ssl"], "must be a mapping"),
    ],
)
def test_bad_connect_options_are_config_errors_naming_them(options: Any, match: str) -> None:
    """An option asyncpg does not take (with the closest one it does), or one the sink sets
    itself (with what to use instead), is a ConfigError when the sink is made."""
    with pytest.raises(wb.ConfigError, match=match):
        wb.PostgresSink(DSN, table="t", connect_kwargs=options)


def test_connect_options_with_a_pool_of_yours_are_refused() -> None:
    """connect_kwargs only applies to the pool the sink opens from a DSN."""
    with pytest.raises(wb.ConfigError, match="a pool of yours"):
        wb.PostgresSink(object(), table="t", connect_kwargs={"ssl": False})


async def _settings(sink: wb.PostgresSink, sql: str) -> Any:
    """``sql`` run on a connection of the sink's own pool."""
    async with sink._pool.acquire() as conn:
        return await conn.fetchval(sql)


@pytest.mark.server
async def test_statement_cache_size_zero_writes_without_prepared_statements(
    pg: asyncpg.Connection,
) -> None:
    """With connect_kwargs={"statement_cache_size": 0} (PgBouncer in transaction mode), every
    write succeeds and the connection holds no prepared statement (pg_prepared_statements is
    empty, the driver's cache too); without it, the same writes leave some."""
    name = f"pgb_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int, note text)")
    try:
        counts = {}
        for cache in (0, None):
            kw = {"connect_kwargs": {"statement_cache_size": 0}} if cache == 0 else {}
            sink = wb.PostgresSink(DSN, table=name, key="id", version="v", pool_size=1, **kw)
            async with wb.AsyncBatcher(sink, key="id", version="v", max_batch=10) as b:
                for i in range(50):
                    b.add_nowait({"id": i % 20, "v": i, "note": str(i)})
                await b.flush()
                counts[cache] = await _settings(sink, "SELECT count(*) FROM pg_prepared_statements")
                async with sink._pool.acquire() as conn:
                    cached = len(conn._con._stmt_cache)  # the pool's proxy wraps the connection
                counts[f"{cache}-client"] = cached
            assert b.stats().committed + b.stats().coalesced == 50
            assert b.stats().dead_lettered == 0
        rows = await pg.fetch(f"SELECT id, v FROM {name} ORDER BY id")
    finally:
        await pg.execute(f"DROP TABLE {name}")
    assert counts[0] == 0, counts
    assert counts["0-client"] == 0, counts
    assert counts[None] > 0, counts
    assert counts["None-client"] > 0, counts
    assert [(r["id"], r["v"]) for r in rows] == [
        (k, k + 40 if k < 10 else k + 20) for k in range(20)
    ]


@pytest.mark.server
async def test_connect_options_reach_the_connection(table: str) -> None:
    """server_settings and command_timeout given in connect_kwargs are in force on the sink's
    connections."""
    sink = wb.PostgresSink(
        DSN, table=table, key="id", version="updated_at",
        connect_kwargs={"server_settings": {"application_name": "wb-opts"}, "command_timeout": 9},
    )  # fmt: skip
    async with wb.AsyncBatcher(sink, key="id", version="updated_at"):
        assert await _settings(sink, "SELECT current_setting('application_name')") == "wb-opts"
        async with sink._pool.acquire() as conn:
            assert conn._con._config.command_timeout == 9


@pytest.mark.server
async def test_a_key_value_dsn_connects_and_its_password_never_shows(
    table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A libpq key=value DSN (quoted values, a password with spaces and a quote) connects and
    writes; its options are in force; the password is in no repr, error or log line."""
    caplog.set_level(logging.DEBUG)
    canary = "Kv Canary\\'s-9f2"  # as written inside the quotes
    dsn = _key_value_dsn(password=f"'{canary}'", application_name="'wb kv'", connect_timeout="5")
    sink = wb.PostgresSink(dsn, table=table, key="id", version="updated_at")
    letters: list[wb.DeadLetterEntry] = []
    async with wb.AsyncBatcher(
        sink, key="id", version="updated_at", dead_letter=letters.extend
    ) as b:
        b.add_nowait({"id": uuid.uuid4(), "updated_at": "2026-11-23T12:00:00Z"})
        b.add_nowait({"id": uuid.uuid4(), "updated_at": "not a time"})
        await b.flush()
        assert await _settings(sink, "SELECT current_setting('application_name')") == "wb kv"
    assert b.stats().committed == 1
    assert len(letters) == 1
    seen = [repr(sink), letters[0].message, repr(letters[0]), caplog.text]
    assert "password=***" in repr(sink)
    for text in seen:
        for secret in ("Canary", "Kv%20Canary"):
            assert secret not in text, text


# -- your own pool, on the batcher's loop --------------------------------------------------------
def _beat(i: int) -> dict[str, Any]:
    return {"id": uuid.UUID(int=i), "updated_at": "2026-11-23T12:00:00Z", "note": str(i)}


@pytest.mark.server
async def test_a_pool_from_another_loop_is_a_config_error_with_the_sync_batcher(table: str) -> None:
    """A pool made on the caller's loop, given to the sync Batcher (whose loop runs in its
    own thread), is a ConfigError at start that says what happened and what to do."""
    pool = await asyncpg.create_pool(DSN, min_size=0, max_size=1)
    try:
        sink = wb.PostgresSink(pool, table=table, key="id", version="updated_at")
        batcher = wb.Batcher(sink, key="id", version="updated_at")
        with pytest.raises(wb.ConfigError, match="another event loop") as info:
            await asyncio.to_thread(batcher.start)
        assert "pool factory" in str(info.value)
        assert not pool._closed  # a pool of yours is never closed by the sink
    finally:
        await pool.close()


@pytest.mark.server
async def test_a_pool_from_another_loop_is_a_config_error_with_the_async_batcher(
    table: str,
) -> None:
    """A pool made on another loop (another thread's asyncio.run) is refused by
    AsyncBatcher at start too, before any write fails opaquely."""

    async def make() -> asyncpg.Pool:
        return await asyncpg.create_pool(DSN, min_size=0, max_size=1)

    pool = await asyncio.to_thread(asyncio.run, make())
    sink = wb.PostgresSink(pool, table=table, key="id", version="updated_at")
    with pytest.raises(wb.ConfigError, match="another event loop"):
        async with wb.AsyncBatcher(sink, key="id", version="updated_at"):
            pass


@pytest.mark.server
def test_a_pool_factory_works_with_the_sync_batcher(table: str) -> None:
    """A sync factory returning an un-awaited asyncpg.create_pool(...) is called on the sync
    Batcher's loop: writes commit, and the sink closes the pool it made."""
    made: list[Any] = []

    def factory() -> Any:
        made.append(asyncpg.create_pool(DSN, min_size=0, max_size=2))
        return made[-1]

    sink = wb.PostgresSink(factory, table=table, key="id", version="updated_at")
    assert "<pool factory>" in repr(sink)
    with wb.Batcher(sink, key="id", version="updated_at", linger=0.01) as b:
        for i in range(20):
            b.add(_beat(i))
        b.flush()
    assert b.stats().committed == 20
    assert len(made) == 1
    assert made[0]._closed


@pytest.mark.server
async def test_an_async_pool_factory_works_with_the_async_batcher(
    table: str, pg: asyncpg.Connection
) -> None:
    """An async factory is awaited at start; records commit; the pool is closed at close."""
    made: list[asyncpg.Pool] = []

    async def factory() -> asyncpg.Pool:
        made.append(await asyncpg.create_pool(DSN, min_size=0, max_size=2))
        return made[-1]

    sink = wb.PostgresSink(factory, table=table, key="id", version="updated_at")
    async with wb.AsyncBatcher(sink, key="id", version="updated_at") as b:
        for i in range(20):
            b.add_nowait(_beat(i))
    assert b.stats().committed == 20
    assert await pg.fetchval(f"SELECT count(*) FROM {table}") == 20
    assert made[0]._closed


async def test_a_factory_that_returns_no_pool_is_a_config_error() -> None:
    """A factory returning something that is not a pool is a ConfigError at start."""
    sink = wb.PostgresSink(lambda: "postgresql://x", table="t")
    with pytest.raises(wb.ConfigError, match="returned a str, not an asyncpg pool"):
        await sink.start()


@pytest.mark.server
async def test_the_reaper_ends_only_the_sinks_own_statement() -> None:
    """An abandoned write's backend is ended by pid, but only if that backend runs a
    statement on the sink's table: behind PgBouncer the pid is made up and may be a
    stranger's session, which must survive (a bare pg_terminate_backend(pid) ended it)."""
    from writebehind.sinks.postgres import _terminate_backend

    table = f"reap_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(DSN)
    stranger = await asyncpg.connect(DSN)
    ours = await asyncpg.connect(DSN)
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=1)
    try:
        await admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        await admin.execute(f"INSERT INTO {table} VALUES (1, 0)")
        locker = admin.transaction()
        await locker.start()
        await admin.execute(f"SELECT * FROM {table} FOR UPDATE")
        target = f'"public"."{table}"'  # as the sink quotes it in its statements
        blocked = asyncio.ensure_future(ours.execute(f"UPDATE {target} SET v = 1"))
        sleeping = asyncio.ensure_future(stranger.execute("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.3)
        await _terminate_backend(pool, stranger.get_server_pid(), target)  # not ours
        await asyncio.sleep(0.3)
        assert not sleeping.done()
        ours_pid = ours.get_server_pid()
        await _terminate_backend(pool, ours_pid, target)  # ours: ended
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await asyncio.wait_for(blocked, 5)
        await locker.rollback()
    finally:
        sleeping.cancel()
        for conn in (stranger, ours):
            conn.terminate()
        await pool.close()
        await admin.execute(f"DROP TABLE IF EXISTS {table}")
        await admin.close()


@pytest.mark.server
async def test_a_dead_letter_store_connects_with_a_key_value_dsn() -> None:
    """PostgresDeadLetter, given a libpq key=value DSN (or the sink holding one), connects
    as the sink does (it handed the DSN to asyncpg as is, which refused it)."""
    dsn = _key_value_dsn()
    table = f"dl_{uuid.uuid4().hex[:10]}"
    store = wb.PostgresDeadLetter(wb.PostgresSink(dsn, table="t"), table=table)
    try:
        entry = wb.DeadLetterEntry(record={"id": 1}, error="E", message="m", sink="s",
                                   batcher="b", attempts=1, at=0.0)  # fmt: skip
        await store.put([entry])
        (stored,) = await store.list()
        assert stored.record() == {"id": 1}
    finally:
        conn = await asyncpg.connect(DSN)
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
        await store.close()
