"""Keeping secrets out of text: DSN redaction and the scrubbing of messages.

Everything that shows a DSN, an error a driver raised, or a line that may quote either goes
through this module: the sinks (``sinks/``), the dead-letter stores (``dlq/``), the command
line (``cli/``) and the engine (through ``_deadletter.scrub_secrets``).

Redaction does not depend on the DSN being well formed. In a URL, everything between
``://`` and the *last* ``@`` after it is the userinfo, whatever it holds, and everything in
it after its first ``:`` is masked: a password with an unencoded ``/``, ``?``, ``#``, ``@``
or ``:`` is masked whole (``urlsplit`` would end the host at the first ``/`` and show the
rest). When an ``@`` is in the query instead, this masks too much, never too little.
``password=`` values are masked in URL queries, in ``key=value`` DSNs (quoted values with
spaces and ``\\'`` escapes included, bare values with libpq's ``\\`` escapes, ``\\ `` too;
an unterminated quote masks to the end) and in any text (``PGPASSWORD=...``,
``"password": "..."``). A ``key=value`` password is scrubbed as written, as libpq reads it
(escapes and quotes removed) and percent-encoded (the form ``PostgresSink`` hands asyncpg).

A driver that cannot parse such a DSN may quote a *piece* of the password in its error
(``invalid literal for int() with base 10: 'S3cr'``): :func:`secrets_of` returns the pieces
too, and :func:`describe` withholds a driver's parse error entirely when the DSN holds a
password.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote, unquote, unquote_plus

__all__ = [
    "describe",
    "has_unencoded_userinfo",
    "may_quote_password",
    "password_of",
    "redact_dsn",
    "scrub",
    "scrub_secrets",
    "secrets_of",
]

MASK = "***"

_PIECE = 3  # pieces of a split password this long or longer are scrubbed as well
_DELIMITERS = re.compile(r"[/?#@:&=,;+\s]+")
_SCHEME = re.compile(r"(?i)^\s*([a-z][a-z0-9+.-]*://)")

# in any text: a URL's userinfo up to the last "@" of its run of non-blank characters
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/?#@\s]*:)\S*@")
# key = value, key: value, "key": "value" (PGPASSWORD=..., sslpassword=... included)
_QUOTED = r"'(?:[^'\\]|\\.)*(?:'|$)|\"(?:[^\"\\]|\\.)*(?:\"|$)"
# a bare value ends at whitespace, but libpq lets "\" escape the next character (a space too)
_BARE = r"(?:\\.|\\$|[^\s\\])+"
_KV_PASSWORD = re.compile(
    r"(?is)(password|passwd|pwd|pw|secret|token)([\"']?\s*[=:]\s*)(" + _QUOTED + "|" + _BARE + ")"
)
# a libpq key=value DSN (or PGPASSWORD=...): the value, quoted (libpq's escapes) or bare
_KV_DSN_PASSWORD = re.compile(r"(?is)[a-z]*password\s*=\s*(" + _QUOTED + "|" + _BARE + ")")
_QUERY_PASSWORD = re.compile(r"(?i)(password=)([^&]*)")


def _split_url(dsn: str) -> tuple[str, str | None, str] | None:
    """``(scheme://, userinfo or None, rest)`` of a URL DSN, by the last ``@``; None if
    ``dsn`` is not a URL."""
    m = _SCHEME.match(dsn)
    if m is None:
        return None
    head, body = dsn[: m.end()], dsn[m.end() :]
    at = body.rfind("@")
    if at < 0:
        return head, None, body
    return head, body[:at], body[at + 1 :]


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password(s) replaced by ``***``, in URL or ``key=value`` form.

    In a URL the userinfo runs from ``://`` to the last ``@``; the user (up to its first
    ``:``) is kept and the rest masked, well formed or not.
    """
    parts = _split_url(dsn)
    if parts is None:
        return _KV_DSN_PASSWORD.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + MASK, dsn)
    head, userinfo, rest = parts
    if userinfo is not None:
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        rest = f"{userinfo}@{rest}"
    return head + _QUERY_PASSWORD.sub(r"\1" + MASK, rest)


def _passwords(dsn: str) -> list[str]:
    """Every password written in ``dsn``, as written."""
    found: list[str] = []
    parts = _split_url(dsn)
    if parts is None:
        for m in _KV_DSN_PASSWORD.finditer(dsn):
            value = m.group(1)
            if value[:1] in ("'", '"'):
                quote = value[0]
                value = value[1:-1] if len(value) > 1 and value.endswith(quote) else value[1:]
            found.append(value)  # as written, escapes included
            found.append(re.sub(r"\\(.)", r"\1", value, flags=re.DOTALL))  # as libpq reads it
        return [p for p in dict.fromkeys(found) if p]
    _head, userinfo, rest = parts
    if userinfo is not None and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    found += [m.group(2) for m in _QUERY_PASSWORD.finditer(rest)]
    return [p for p in found if p]


def password_of(dsn: str) -> str | None:
    """The (first) password written in ``dsn``, as written, or None."""
    found = _passwords(dsn)
    return found[0] if found else None


def secrets_of(dsn: str) -> tuple[str, ...]:
    """Every string to scrub from text that may quote ``dsn``: each password as written and
    percent-decoded, and, for a password holding URL delimiters (which a driver may split
    on), each piece of it of ``_PIECE`` characters or more. Longest first."""
    out: set[str] = set()
    for raw in _passwords(dsn):
        # percent-encoded too: PostgresSink hands a key=value DSN to asyncpg as a URL
        for form in (raw, unquote(raw), unquote_plus(raw), quote(raw, safe="")):
            out.add(form)
            pieces = [p for p in _DELIMITERS.split(form) if p]
            if len(pieces) > 1:
                out.update(p for p in pieces if len(p) >= _PIECE)
    out.discard("")
    return tuple(sorted(out, key=lambda s: (-len(s), s)))


def has_unencoded_userinfo(dsn: str) -> bool:
    """Whether ``dsn`` is a URL whose userinfo (up to the last ``@``) holds a password with
    ``/``, ``?``, ``#`` or ``@`` unencoded: a URL parser reads such a DSN differently."""
    parts = _split_url(dsn)
    if parts is None or parts[1] is None or ":" not in parts[1]:
        return False
    return any(c in parts[1] for c in "/?#@")


def may_quote_password(dsn: str | None, exc: BaseException) -> bool:
    """Whether ``exc``, raised while connecting with ``dsn``, may quote a piece of the DSN's
    password that scrubbing cannot recognise: the DSN holds a password, and either a URL
    parser misreads its userinfo or ``exc`` is a parse error (a ``ValueError``, asyncpg's
    ``ClientConfigurationError`` included)."""
    if not dsn or password_of(dsn) is None:
        return False
    return has_unencoded_userinfo(dsn) or isinstance(exc, ValueError)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` (literal strings) replaced by ``***``, longest
    first."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def scrub_secrets(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with ``secrets``, URL passwords and ``password=...``-style values masked."""
    text = scrub(text, secrets)
    text = _URL_PASSWORD.sub(r"\1" + MASK + "@", text)
    return _KV_PASSWORD.sub(r"\1\2" + MASK, text)


def describe(exc: BaseException, secrets: Sequence[str] = (), *, withhold: bool = False) -> str:
    """``Type: message`` for ``exc``, secrets scrubbed. With ``withhold`` (a driver failed
    to parse a DSN that holds a password: its message may quote a piece of it), the message
    is replaced by a note saying why."""
    name = type(exc).__name__
    if withhold:
        return (
            f"{name} (the driver's message is withheld: it may quote part of the password; if "
            "the password holds '/', '?', '#', '@' or ':', percent-encode it in the DSN, e.g. "
            "with urllib.parse.quote(password, safe=''))"
        )
    return f"{name}: {scrub_secrets(str(exc), secrets)}"
