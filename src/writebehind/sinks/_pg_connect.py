"""How ``PostgresSink`` connects: libpq ``key=value`` DSNs, and the driver's connect options.

**key=value DSNs.** asyncpg takes only URLs (``postgresql://...``); libpq, psql and psycopg
also take ``"host=db user=app password='s3 cret' dbname=prod"``. :func:`asyncpg_dsn`
parses that form by libpq's rules (``key = value`` pairs separated by whitespace; a value in
single quotes may hold spaces, with ``\\'`` and ``\\\\`` escapes; a bare value ends at
whitespace, ``\\`` escaping the next character) and translates it into the URL asyncpg
reads the same way: every option travels percent-encoded in the query, where asyncpg takes
``host``, ``port``, ``dbname``, ``user``, ``password``, ``passfile``, the ``ssl*`` options,
``service``, ``target_session_attrs``, ``krbsrvname`` and ``gsslib``, and sends the others
(``application_name``, ``options``) to the server as startup settings, as libpq does.
``connect_timeout`` becomes asyncpg's ``timeout``. An option libpq knows but asyncpg cannot
honour (``keepalives``, ``hostaddr``, ``gssencmode``, ...) and a key libpq does not know
are a ``ConfigError`` naming the key; no error quotes a value, so none shows a password.

**Your own pool** must live on the batcher's event loop: :func:`on_this_loop` tells, and a
pool *factory* (:func:`pool_from_factory`) makes one there, which is how a pool of yours
reaches the sync ``Batcher`` (its loop runs in a thread of its own).

**Connect options** (``connect_kwargs=``): a mapping of keyword arguments for asyncpg's
``connect()`` (``ssl``, ``server_settings``, ``command_timeout``, ``statement_cache_size``,
...) and for the pool (``max_queries``, ``max_inactive_connection_lifetime``, ``setup``,
``init``). A mapping rather than keywords of the sink: the options are the driver's, the
sink passes them through untouched, and its own signature stays the sink's. :data:`OPTIONS`
is checked against the installed asyncpg by a test.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import quote

from .._errors import ConfigError
from .._redact import redact_dsn, secrets_of

log = logging.getLogger("writebehind")
REAP_TIMEOUT = 1.0  # seconds to end the server side of an abandoned write

__all__ = [
    "OPTIONS",
    "OTHER_LOOP",
    "SINK_OWNED",
    "Source",
    "asyncpg_dsn",
    "check_connect_kwargs",
    "on_this_loop",
    "parse_conninfo",
    "pool_from_factory",
    "source_of",
]

CONNECT_OPTIONS = frozenset(
    {
        "host", "port", "user", "password", "passfile", "service", "servicefile", "database",
        "timeout", "statement_cache_size", "max_cached_statement_lifetime",
        "max_cacheable_statement_size", "command_timeout", "ssl", "direct_tls",
        "connection_class", "record_class", "server_settings", "target_session_attrs",
        "krbsrvname", "gsslib",
    }
)  # fmt: skip
"""asyncpg.connect()'s keyword arguments (0.30-0.32), but ``dsn`` and ``loop``."""
POOL_OPTIONS = frozenset({"max_queries", "max_inactive_connection_lifetime", "setup", "init"})
OPTIONS = CONNECT_OPTIONS | POOL_OPTIONS
SINK_OWNED = {
    "dsn": "give the DSN as the sink's first argument",
    "min_size": "the sink keeps no idle connections (min_size=0, see docs/postgres.md)",
    "max_size": "use pool_size=",
    "init_size": "the sink opens connections as writes need them",
    "reset": "the sink's own pool resets nothing (it keeps no session state)",
    "connect": "pass a pool factory as the sink's first argument instead",
    "loop": "the pool is made on the batcher's loop",
}

# libpq's keywords (PostgreSQL 17) that a URL query carries to asyncpg as libpq means them
_URL_KEYS = frozenset(
    {
        "host", "port", "dbname", "user", "password", "passfile", "sslmode", "sslcert",
        "sslkey", "sslrootcert", "sslcrl", "sslpassword", "sslnegotiation",
        "ssl_min_protocol_version", "ssl_max_protocol_version", "target_session_attrs",
        "krbsrvname", "gsslib", "service", "application_name", "options",
    }
)  # fmt: skip
# libpq's keywords asyncpg has no equivalent for
_UNSUPPORTED = frozenset(
    {
        "hostaddr", "require_auth", "channel_binding", "client_encoding", "keepalives",
        "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
        "replication", "gssencmode", "requiressl", "sslcompression", "sslcertmode",
        "sslcrldir", "sslsni", "requirepeer", "gssdelegation", "load_balance_hosts",
    }
)  # fmt: skip
_OTHER_KEYS = frozenset({"connect_timeout", "fallback_application_name"})
_LIBPQ_KEYS = _URL_KEYS | _UNSUPPORTED | _OTHER_KEYS


def parse_conninfo(dsn: str) -> list[tuple[str, str]]:
    """The ``(key, value)`` pairs of a libpq ``key=value`` string, by libpq's rules.
    ``ConfigError`` (quoting no value) if it is malformed."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(dsn)
    while True:
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n:
            return pairs
        start = i
        while i < n and not dsn[i].isspace() and dsn[i] != "=":
            i += 1
        key = dsn[start:i]
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n or dsn[i] != "=":
            where = f"after {pairs[-1][0]!r}" if pairs else "at its start"
            raise ConfigError(  # the word itself is not shown: it may be a password
                f"dsn: a word {where} has no '='; a key=value DSN is pairs like "
                f'"host=db user=app dbname=prod" (or give a postgresql:// URL)'
            )
        i += 1
        while i < n and dsn[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and dsn[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ConfigError(f"dsn: the quoted value of {key!r} has no closing quote")
                c = dsn[i]
                if c == "\\" and i + 1 < n:
                    value.append(dsn[i + 1])
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    value.append(c)
                    i += 1
        else:
            while i < n and not dsn[i].isspace():
                if dsn[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(dsn[i])
                i += 1
        pairs.append((key, "".join(value)))


def asyncpg_dsn(dsn: str) -> tuple[str, dict[str, Any]]:
    """``dsn`` as asyncpg takes it: a URL (a URL is returned as is) and keyword arguments
    (``timeout`` from ``connect_timeout``). ``ConfigError`` names a key it cannot honour."""
    if "://" in dsn.split("=", 1)[0] or not dsn.strip():
        return dsn, {}
    options: dict[str, str] = {}
    for key, value in parse_conninfo(dsn):
        if key not in _LIBPQ_KEYS:
            close = difflib.get_close_matches(key, sorted(_LIBPQ_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"dsn: {key!r} is not a libpq connection option{hint}")
        if key in _UNSUPPORTED:
            raise ConfigError(
                f"dsn: the libpq option {key!r} has no equivalent in asyncpg, which the sink "
                f"uses; remove it (connect_kwargs= takes asyncpg's own options, e.g. ssl=)"
            )
        options[key] = value
    kwargs: dict[str, Any] = {}
    fallback = options.pop("fallback_application_name", "")
    if fallback and not options.get("application_name"):
        options["application_name"] = fallback
    timeout = options.pop("connect_timeout", "")
    if timeout:
        try:
            kwargs["timeout"] = float(timeout)
        except ValueError:
            raise ConfigError(
                f"dsn: connect_timeout must be a number of seconds, got {timeout!r}"
            ) from None
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items() if v)
    return "postgresql://" + (f"?{query}" if query else ""), kwargs


def check_connect_kwargs(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``connect_kwargs`` as a dict, or ``ConfigError`` naming an option the sink cannot
    pass on: one it owns (with what to do instead) or one asyncpg does not take."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"connect_kwargs: must be a mapping of asyncpg connect options, e.g. "
            f"{{'statement_cache_size': 0}}; got {type(options).__name__}"
        )
    for name in options:
        if name in SINK_OWNED:
            raise ConfigError(f"connect_kwargs: {name!r} is set by the sink; {SINK_OWNED[name]}")
        if name not in OPTIONS:
            close = difflib.get_close_matches(str(name), sorted(OPTIONS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"connect_kwargs: {name!r} is not an option of asyncpg.connect() or its pool; "
                f"{hint}(known: {', '.join(sorted(OPTIONS))})"
            )
    return dict(options)


class Source(NamedTuple):
    """What ``PostgresSink``'s first argument is, read once at construction."""

    dsn: str | None  # the DSN (password included: never log it), or None
    pool: Any  # a pool of the caller's, used as is and never closed by the sink
    factory: Any  # a function making the sink's pool at each start
    secrets: tuple[str, ...]  # what an error message must never show
    where: str  # the server for messages: the DSN redacted, or "<pool>"
    url: str  # the DSN as asyncpg takes it ("" for psycopg, a pool or a factory)
    connect: dict[str, Any]  # asyncpg's connect options: the DSN's, then connect_kwargs


def source_of(dsn_or_pool: Any, driver: str, connect_kwargs: Mapping[str, Any] | None) -> Source:
    """Read ``dsn_or_pool`` (a DSN, a pool factory or a pool), with ``ConfigError`` for
    ``connect_kwargs`` that would not apply (they are for the pool the sink opens)."""
    connect = check_connect_kwargs(connect_kwargs)
    if isinstance(dsn_or_pool, str):
        url, implied = ("", {}) if driver == "psycopg" else asyncpg_dsn(dsn_or_pool)
        connect = implied | connect
        secrets = secrets_of(dsn_or_pool)
        password = connect.get("password")
        if isinstance(password, str) and password:
            secrets = tuple(sorted({*secrets, password}, key=len, reverse=True))
        return Source(dsn_or_pool, None, None, secrets, redact_dsn(dsn_or_pool), url, connect)
    factory = callable(dsn_or_pool) and not hasattr(dsn_or_pool, "acquire")
    if connect_kwargs:
        raise ConfigError(
            "connect_kwargs: apply to the pool the sink opens from a DSN; "
            + (
                "give the options to asyncpg.create_pool in your factory"
                if factory
                else "a pool of yours is used as you configured it (pass the options to "
                "asyncpg.create_pool)"
            )
        )
    if factory:
        return Source(None, None, dsn_or_pool, (), "<pool factory>", "", connect)
    return Source(None, dsn_or_pool, None, (), "<pool>", "", connect)


OTHER_LOOP = (
    "PostgresSink: the asyncpg pool was made on another event loop than the batcher's (a "
    "sync wb.Batcher runs its own loop in a thread; each asyncio.run() makes a new loop), and "
    "asyncpg connections work only on the loop that made them. Pass a pool factory instead, "
    "which the sink calls on the batcher's loop at start: "
    "PostgresSink(lambda: asyncpg.create_pool(dsn, ...), table=...); or a DSN"
)


def on_this_loop(pool: Any) -> bool:
    """Whether ``pool`` (if it says) was made on the running loop: asyncpg's connections
    work only there ('another operation is in progress' otherwise). asyncpg has no public
    accessor for a pool's loop; ``Pool._loop`` is where 0.30-0.32 keep it."""
    loop = getattr(pool, "_loop", None)
    return loop is None or loop is asyncio.get_running_loop()


async def pool_from_factory(factory: Callable[[], Any], on_error: Callable[..., Exception]) -> Any:
    """Call ``factory`` (on the batcher's loop) and await what it returns if need be (an
    un-awaited ``asyncpg.create_pool(...)`` included). Its failure goes through
    ``on_error(exc, connecting=True)``; a result that is no pool is a ``ConfigError``."""
    try:
        pool = factory()
        if inspect.isawaitable(pool):
            pool = await pool
    except ConfigError:
        raise
    except Exception as exc:
        raise on_error(exc, connecting=True) from exc
    if not (hasattr(pool, "acquire") or hasattr(pool, "connection")):
        raise ConfigError(
            f"PostgresSink: the pool factory returned a {type(pool).__name__}, not an "
            f"asyncpg pool; return asyncpg.create_pool(...) (awaited or not)"
        )
    return pool


async def _terminate_backend(pool: Any, pid: int, target: str) -> None:
    """End backend ``pid`` only if it is ours: this role's, running a statement on the
    sink's table. Behind a pooler (PgBouncer) the pid a connection reports is not a real
    backend's; a bare ``pg_terminate_backend(pid)`` could then end a stranger's session."""
    try:
        async with asyncio.timeout(REAP_TIMEOUT):
            await pool.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 "
                "AND usename = current_user AND position($2 in query) > 0",
                pid, target,
            )  # fmt: skip
    except Exception as exc:  # the server is gone too, or the pool closed: nothing to end
        log.debug("PostgresSink: could not end backend %d: %s", pid, type(exc).__name__)


async def _no_reset(conn: Any) -> None:
    """The sink's own pool uses no session state (advisory locks, LISTEN, cursors,
    settings), so the reset query asyncpg runs on every release is a wasted round trip."""
