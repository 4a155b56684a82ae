"""Secrets stay out of text: DSN redaction, scrubbing, and a canary password planted in every
DSN shape, looked for in every repr, error, command-line line and log record."""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from urllib.parse import quote

import asyncpg
import pytest

import writebehind as wb
from writebehind._redact import (
    has_unencoded_userinfo,
    may_quote_password,
    password_of,
    redact_dsn,
    scrub_secrets,
    secrets_of,
)
from writebehind.cli.main import main
from writebehind.dlq import PostgresDeadLetter

from .pg import DSN

# a password holding every URL delimiter; each piece between them is distinctive too
CANARY = "Kq7/Xv9?Zw3#Mp5@Rt8:Yb2"
PIECES = re.split(r"[/?#@:]", CANARY)


# -- redaction, pure ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://root:S3cr/et!Zq9@host/db", "postgresql://root:***@host/db"),
        ("postgresql://root:a?b#c@d:e@host:5432/db", "postgresql://root:***@host:5432/db"),
        (
            "postgresql://u:p%2Fw@h:5/db?sslmode=require",
            "postgresql://u:***@h:5/db?sslmode=require",
        ),
        ("postgres://:pw@h/db", "postgres://:***@h/db"),
        ("postgresql://root@h/db", "postgresql://root@h/db"),
        ("postgresql://h/db?user=u&password=p@ss&x=1", "postgresql://h/db?user=u&password=***&x=1"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("host=h password=pw dbname=x", "host=h password=*** dbname=x"),
        ("host=h password='a b\\' c' dbname=x", "host=h password=*** dbname=x"),
        ("host=h password = 'never closed dbname=x", "host=h password = ***"),
        ("host=h password=a\\ b\\ c dbname=x", "host=h password=*** dbname=x"),
        ("host=h sslpassword=k3y password=pw", "host=h sslpassword=*** password=***"),
        ("host=h\tpassword=\tpw\nuser=u", "host=h\tpassword=\t***\nuser=u"),
        ("PGPASSWORD=hunter2 psql", "PGPASSWORD=*** psql"),
    ],
)
def test_redact_dsn_masks_whatever_the_password_holds(dsn: str, shown: str) -> None:
    """Redaction masks everything between the user and the last '@', in well-formed and
    malformed URLs alike, and password= values in key=value DSNs, quoted or not."""
    assert redact_dsn(dsn) == shown


def test_key_value_passwords_are_scrubbed_in_every_form_libpq_and_asyncpg_see() -> None:
    """A key=value DSN's password is a secret as written (escapes included), as libpq reads
    it (quotes and backslash escapes removed) and percent-encoded (the URL PostgresSink hands
    asyncpg), and may_quote_password withholds a parse error of such a DSN."""
    dsn = "host=h password='it\\'s a s3cret' user=u"
    secrets = set(secrets_of(dsn))
    assert {"it\\'s a s3cret", "it's a s3cret", quote("it's a s3cret", safe="")} <= secrets
    assert password_of(dsn) == "it\\'s a s3cret"
    bare = "host=h password=a\\ b\\\\c user=u"
    assert {"a\\ b\\\\c", "a b\\c"} <= set(secrets_of(bare))
    assert may_quote_password(dsn, ValueError("bad"))
    assert not may_quote_password("host=h user=u", ValueError("bad"))
    text = scrub_secrets("connect failed: " + quote("it's a s3cret", safe=""), secrets_of(dsn))
    assert "s3cret" not in text


def test_secrets_of_names_the_password_its_decoded_form_and_its_pieces() -> None:
    """A password is scrubbed as written, percent-decoded, and, when a parser could split it
    on a delimiter, piece by piece (pieces of 3 characters or more)."""
    assert password_of("postgresql://root:S3cr/et!Zq9@host/db") == "S3cr/et!Zq9"
    assert set(secrets_of("postgresql://root:S3cr/et!Zq9@host/db")) == {
        "S3cr/et!Zq9",
        "S3cr%2Fet%21Zq9",  # percent-encoded: the form a URL carries
        "S3cr",
        "et!Zq9",
    }
    assert "a/b@cdef" in secrets_of("postgresql://u:a%2Fb%40cdef@h/db")
    assert set(secrets_of("host=h password='x y z'")) == {"x y z", "x%20y%20z"}
    assert secrets_of("postgresql://u@h/db") == ()
    assert has_unencoded_userinfo("postgresql://root:S3cr/et@host/db")
    assert not has_unencoded_userinfo("postgresql://root:S3cr%2Fet@host/db")
    assert not has_unencoded_userinfo("postgresql://host/db?application_name=a@b")


@pytest.mark.parametrize(
    "text",
    [
        f"could not connect to postgresql://root:{CANARY}@db:5432/x: refused",
        f"PGPASSWORD={CANARY} psql -h db",
        f'{{"password": "{CANARY}", "user": "u"}}',
        f"host=db password='{CANARY} with spaces' user=u",
    ],
)
def test_scrub_secrets_in_free_text(text: str) -> None:
    """URL passwords (up to the last '@'), password= values, PGPASSWORD=... and JSON-style
    "password": "..." are masked in any text."""
    clean = scrub_secrets(text)
    assert "***" in clean
    for piece in PIECES:
        assert piece not in clean


# -- the canary, in every shape and every surface --------------------------------------
def _url(password: str, host: str = "127.0.0.1:1") -> str:
    return f"postgresql://root:{password}@{host}/test"


DSN_SHAPES = {
    "url-unencoded": _url(CANARY),
    "url-unencoded-bad-host": _url(CANARY, "no such host:xyz"),
    "url-percent-encoded": _url(quote(CANARY, safe="")),
    "url-query": f"postgresql://root@127.0.0.1:1/test?password={quote(CANARY, safe='')}",
    "key-value": f"host=127.0.0.1 port=1 user=root password={CANARY} dbname=test",
    "key-value-quoted": (
        f"host=127.0.0.1 port=1 user=root password='{CANARY} and \\' more' dbname=test"
    ),
}


def _leaks(text: str) -> list[str]:
    """The canary (as written or percent-encoded) or any piece of it found in ``text``."""
    return [s for s in (CANARY, quote(CANARY, safe=""), *PIECES) if s in text]


def _error_text(exc: BaseException) -> str:
    """Everything an error shows: str, repr, and its traceback as a log line would print it
    (causes and contexts included, unless suppressed)."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


async def _surfaces(sink: wb.PostgresSink, store: PostgresDeadLetter) -> list[str]:
    seen = [repr(sink), str(sink), repr(store), str(store)]
    with pytest.raises(wb.WriteBehindError) as started:
        async with wb.AsyncBatcher(sink, key="id", dead_letter=None):
            pass
    seen.append(_error_text(started.value))
    with pytest.raises(wb.WriteBehindError) as counted:
        await store.count()
    await store.close()
    seen.append(_error_text(counted.value))
    return seen


@pytest.mark.server
@pytest.mark.parametrize("shape", list(DSN_SHAPES))
async def test_canary_password_never_shows(
    shape: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """For each DSN shape, the canary password (and every piece of it) is in no repr or
    str of the sink or the dead-letter store, no start or store error (traceback included),
    no line of ``writebehind dlq --dsn`` or ``writebehind demo --dsn``, and no log record."""
    caplog.set_level(logging.DEBUG)
    dsn = DSN_SHAPES[shape]
    sink = wb.PostgresSink(dsn, table="hb", key="id")
    store = PostgresDeadLetter(dsn, table="dl")
    seen = await _surfaces(sink, store)
    seen.append(repr(PostgresDeadLetter(sink)))
    for argv in (
        ["dlq", "list", "--dsn", dsn],
        ["dlq", "show", "1", "--dsn", dsn],
        ["dlq", "purge", "--all", "--yes", "--dsn", dsn],
        ["dlq", "replay", "--dsn", dsn, "--to-dsn", dsn, "--to-table", "t"],
        ["demo", "--plain", "--no-naive", "--agents", "2", "--duration", "0.1", "--dsn", dsn],
    ):
        code = await asyncio.to_thread(main, argv)
        out, err = capsys.readouterr()
        assert code in (1, 2), (argv, out, err)
        assert err.strip(), argv
        seen += [out, err]
    seen += [r.getMessage() for r in caplog.records]
    seen += [_error_text(r.exc_info[1]) for r in caplog.records if r.exc_info and r.exc_info[1]]
    seen.append(caplog.text)
    for text in seen:
        assert not _leaks(text), (shape, text)


@pytest.mark.server
async def test_canary_password_never_shows_with_a_pool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sink or store given a pool (made with a canary password) shows nothing of it: its
    repr says <pool>, and start and store errors are scrubbed like the DSN's."""
    caplog.set_level(logging.DEBUG)
    scheme, rest = DSN.split("://", 1)
    host = rest.rsplit("@", 1)[-1]
    pool = await asyncpg.create_pool(f"{scheme}://root:{quote(CANARY, safe='')}@{host}")
    try:
        sink = wb.PostgresSink(pool, table="no_such_table_canary", key="id")
        store = PostgresDeadLetter(pool, schema="no_such_schema_canary")
        seen = await _surfaces(sink, store)
        seen.append(repr(PostgresDeadLetter(sink)))
    finally:
        await pool.close()
    assert "<pool>" in seen[0]
    seen.append(caplog.text)
    for text in seen:
        assert not _leaks(text), text


def test_deadletter_module_still_exports_scrub_secrets() -> None:
    """The engine's import of scrub_secrets from _deadletter keeps working (one helper)."""
    from writebehind import _deadletter, _redact

    assert _deadletter.scrub_secrets is _redact.scrub_secrets
