"""``writebehind dlq``: read, replay and purge a dead-letter store.

``list``, ``show ID``, ``replay`` and ``purge`` read the store they are told to: a SQLite
file (``--db PATH``) or a PostgreSQL table (``--dsn DSN``). There is no default store (a
batcher keeps dead letters only where its ``dead_letter=`` option says), so naming neither
is a usage error. Exit codes: 0 done; 1 a replay did not write every record it selected,
``show`` found no such id, or the store failed; 2 a usage error, a missing store file or
table, or ``purge`` without ``--yes`` when it cannot ask.

Stored messages and records are printed with terminal controls escaped (see
:mod:`._text`); ``list --json`` prints them exactly, the record as plain JSON
(:func:`writebehind.dlq._codec.to_plain`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from .._errors import ConfigError, WriteBehindError
from ..dlq._codec import to_plain
from ..dlq._replay import OriginalBatcher
from ._args import dsn, identifier, integer
from ._text import printable

__all__ = ["register"]

_MESSAGE_WIDTH = 60


def register(commands: Any) -> None:
    """Add the ``dlq`` subcommand to the ``writebehind`` parser's subcommands."""
    dlq: argparse.ArgumentParser = commands.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters",
        description="Read, replay and purge the records a batcher dead-lettered.",
    )
    dlq.set_defaults(command=lambda args: _usage(dlq), command_name="dlq")
    sub = dlq.add_subparsers(title="dlq commands", metavar="COMMAND")

    ls = sub.add_parser("list", help="list entries, oldest first")
    _source(ls)
    ls.add_argument("--limit", type=_count, default=100, help="at most N (default: 100)")
    ls.add_argument("--after", type=_count, default=None, metavar="ID", help="ids above ID")
    ls.add_argument("--error", help="only this error class, e.g. PermanentSinkError")
    ls.add_argument("--batcher", help="only entries from the batcher with this name")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(command=_list)

    show = sub.add_parser("show", help="one entry in full, its record as JSON")
    show.add_argument("id", type=_count, metavar="ID")
    _source(show)
    show.set_defaults(command=_show)

    replay = sub.add_parser(
        "replay",
        help="add stored records to a batcher writing to a sink; delete what got through",
        description=(
            "Replay dead letters into a SQLite (--to-db) or PostgreSQL (--to-dsn) table. An "
            "entry is deleted when its record commits (or is superseded, or is dead-lettered "
            "again: the fresh entry replaces it); otherwise it stays. Exit 1 unless every "
            "selected record was written."
        ),
    )
    _source(replay)
    target = replay.add_mutually_exclusive_group()
    target.add_argument("--to-db", metavar="PATH", help="the SQLite file to write (SQLiteSink)")
    target.add_argument(
        "--to-dsn",
        metavar="DSN",
        type=dsn,
        help="the PostgreSQL to write (PostgresSink); env:NAME reads it from $NAME",
    )
    replay.add_argument("--to-table", type=_ident("table"), help="the table to write")
    replay.add_argument("--to-schema", type=_ident("schema"), default="public", help="(PostgreSQL)")
    replay.add_argument("--key", type=_names("key"), help="key column(s), comma separated")
    replay.add_argument("--version", type=_names("version"), help="the version column")
    replay.add_argument("--ids", type=_ids, help="only these ids, comma separated")
    replay.add_argument("--limit", type=_count, default=None, help="at most N entries")
    replay.add_argument("--dry-run", action="store_true", help="decode only; change nothing")
    replay.set_defaults(command=_replay)

    purge = sub.add_parser("purge", help="delete entries (asks for --yes)")
    _source(purge)
    what = purge.add_mutually_exclusive_group(required=True)
    what.add_argument("--ids", type=_ids, help="these ids, comma separated")
    what.add_argument("--before", type=_time, metavar="ISO-TIME", help="older than this (UTC)")
    what.add_argument("--all", action="store_true", help="every entry")
    purge.add_argument("--yes", action="store_true", help="do not ask")
    purge.set_defaults(command=_purge)


# -- arguments -------------------------------------------------------------------------
def _source(parser: argparse.ArgumentParser) -> None:
    """The store's flags: ``--db`` or ``--dsn``, and ``--dlq-table``/``--dlq-schema`` (the
    same names in every dlq command; ``replay`` names its target ``--to-...``)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--db", metavar="PATH", help="the SQLite dead-letter file (no default: name it)"
    )
    where.add_argument(
        "--dsn",
        type=dsn,
        help=(
            "read a PostgreSQL dead-letter table instead; env:NAME reads the DSN from $NAME "
            "(keeps a password out of the process list)"
        ),
    )
    parser.add_argument(
        "--dlq-table",
        dest="dlq_table",
        type=_ident("table"),
        help="the store's table (default: dead_letters, or writebehind_dead_letters with --dsn)",
    )
    parser.add_argument(
        "--dlq-schema",
        dest="dlq_schema",
        type=_ident("schema"),
        default="public",
        help="the store's schema, with --dsn (default: public)",
    )


_ident = identifier


def _names(what: str) -> Callable[[str], str | tuple[str, ...]]:
    one = _ident(what)

    def parse(text: str) -> str | tuple[str, ...]:
        names = tuple(one(n.strip()) for n in text.split(","))
        return names[0] if len(names) == 1 else names

    return parse


_count = integer(0)


def _ids(text: str) -> list[int]:
    return [_count(part.strip()) for part in text.split(",") if part.strip()]


def _time(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2024-05-01T12:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# -- running ---------------------------------------------------------------------------
def _named_store(args: argparse.Namespace) -> None:
    """Refuse to guess the store: it is named with --db or --dsn, or it is a usage error."""
    if not (args.db or args.dsn):
        raise ConfigError(
            "name the dead-letter store: --db PATH (a SQLite file) or --dsn DSN (PostgreSQL); "
            "there is no default store (a batcher keeps dead letters only where its "
            "dead_letter= option says)"
        )


def _store(args: argparse.Namespace) -> Any:
    from ..dlq import PostgresDeadLetter, SQLiteDeadLetter

    _named_store(args)
    if args.dsn:
        table = args.dlq_table or "writebehind_dead_letters"
        return PostgresDeadLetter(args.dsn, table=table, schema=args.dlq_schema)
    return SQLiteDeadLetter(args.db, table=args.dlq_table or "dead_letters", create=False)


def _run(args: argparse.Namespace, body: Callable[[Any], Awaitable[int]]) -> int:
    """Open the store, run ``body(store)``, close; store failures print and exit 1."""

    async def go() -> int:
        store = _store(args)
        try:
            return await body(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except ConfigError:
        raise  # main prints it; exit 2
    except WriteBehindError as exc:
        print(f"writebehind dlq: error: {printable(str(exc))}", file=sys.stderr)
        return 1


def _when(at: float) -> str:
    return (
        dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def _one_line(text: str, width: int) -> str:
    text = printable(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 3] + "..."


def _list(args: argparse.Namespace) -> int:
    async def body(store: Any) -> int:
        entries = await store.list(
            limit=args.limit, after=args.after, batcher=args.batcher, error=args.error
        )
        if args.json:
            for e in entries:  # the record as plain JSON, not the store's tagged form
                row = {**e.to_dict(), "record": to_plain(e.record_json, e.encoding)}
                print(json.dumps(row, ensure_ascii=False, sort_keys=True))
            return 0
        rows = [("id", "time", "batcher", "error", "message")]
        rows += [
            (
                str(e.id),
                _when(e.at),
                printable(e.batcher),
                printable(e.error),
                _one_line(e.message, _MESSAGE_WIDTH),
            )
            for e in entries
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            cells = [r[0].rjust(widths[0])]
            cells += [c.ljust(w) for c, w in zip(r[1:4], widths[1:], strict=True)]
            print("  ".join([*cells, r[4]]).rstrip())
        total = await store.count()
        print(f"{len(entries)} shown, {total} in the store", file=sys.stderr)
        return 0

    return _run(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(store: Any) -> int:
        entry = await store.get(args.id)
        if entry is None:
            print(f"writebehind dlq: no entry with id {args.id}", file=sys.stderr)
            return 1
        fields = [
            ("id", entry.id),
            ("time", _when(entry.at)),
            ("batcher", entry.batcher),
            ("sink", entry.sink),
            ("error", entry.error),
            ("message", entry.message),
            ("attempts", entry.attempts),
            ("type", entry.record_type),
            ("encoding", entry.encoding),
        ]
        for name, value in fields:  # a multi-line message stays under its label
            text = printable(str(value), lines=True).replace("\n", "\n" + " " * 10)
            print(f"{name + ':':<10}{text}")
        stored = json.loads(entry.record_json)
        if entry.replayable:
            print("record:")
            print(printable(json.dumps(stored, indent=2, ensure_ascii=False), lines=True))
        else:
            print("record:   (its repr; it could not be encoded as JSON, so it cannot be replayed)")
            print(printable(str(stored), lines=True))
        return 0

    return _run(args, body)


def _replay(args: argparse.Namespace) -> int:
    _named_store(args)
    if not args.dry_run and not ((args.to_db or args.to_dsn) and args.to_table):
        raise ConfigError("replay: give the target, --to-db PATH or --to-dsn DSN, and --to-table")
    if args.version and not args.key:
        raise ConfigError("replay: --version needs --key")

    async def body(store: Any) -> int:
        if args.dry_run:
            report = await store.replay(None, ids=args.ids, limit=args.limit, dry_run=True)
        else:
            report = await _replay_into(store, args)
        for line in report.lines():
            print(line)
        if report.refused_ids:
            ids = ",".join(map(str, report.refused_ids))
            print(f"refused ids (stored as repr, not replayable): {ids}", file=sys.stderr)
        if args.dry_run:
            return 0
        written = report.committed + report.coalesced
        return 0 if written == report.selected else 1

    return _run(args, body)


async def _replay_into(store: Any, args: argparse.Namespace) -> Any:
    from .. import AsyncBatcher, PostgresSink, SQLiteSink

    key, version = args.key, args.version
    if args.to_db:
        sink: Any = SQLiteSink(args.to_db, table=args.to_table, key=key, version=version)
    else:
        sink = PostgresSink(
            args.to_dsn, table=args.to_table, schema=args.to_schema, key=key, version=version
        )
    # records the sink refuses again go back to this store (a fresh entry each), under the
    # batcher name they had
    keeper = OriginalBatcher(store)
    batcher = AsyncBatcher(sink, key=key, version=version, dead_letter=keeper, name="dlq-replay")
    async with batcher:
        return await store.replay(batcher, ids=args.ids, limit=args.limit)


def _purge(args: argparse.Namespace) -> int:
    _named_store(args)
    if args.all:
        what = "every entry"
    elif args.ids is not None:
        what = f"{len(set(args.ids))} entr{'y' if len(set(args.ids)) == 1 else 'ies'} by id"
    else:
        what = f"every entry older than {args.before.isoformat()}"
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"writebehind dlq purge: would delete {what}; add --yes", file=sys.stderr)
            return 2
        answer = input(f"delete {what}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1

    async def body(store: Any) -> int:
        if args.ids is not None:
            n = await store.delete(args.ids)
        else:
            n = await store.purge(before=args.before, all=args.all)
        print(f"deleted {n}")
        return 0

    return _run(args, body)
