"""``writebehind spool``: inspect, verify and replay a durable spool directory.

``inspect DIR`` and ``verify DIR`` open the spool as a batcher would (``SpoolLog.open``:
it takes the lock, recovers, and moves damaged frames aside into ``damaged/``), read its
figures and close it: nothing else changes. ``replay DIR`` runs a batcher with ``spool=DIR``
on a SQLite (``--to-db``) or PostgreSQL (``--to-dsn``) sink: its start takes back what the
spool holds, ``flush()`` delivers it, ``close()`` marks it done.

A directory that holds no spool (no ``lock`` file) is refused, never created. Exit codes: 0
done (``verify``: no damage found); 1 the spool cannot be opened (missing, not ours, held by
a running batcher), ``verify`` found damage, or a replay did not deliver everything; 2 a
usage error. Paths and messages are printed with terminal controls escaped (``--json`` stays
exact); a DSN's password is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError, WriteBehindError
from .._redact import redact_dsn, scrub_secrets, secrets_of
from ._args import Unavailable, dsn, identifier, positive_float
from ._text import printable

__all__ = ["register"]

_OPENS = (
    "Opening a spool is what a batcher's start does: it takes the spool's lock, recovers it, "
    "and moves damaged frames (a torn tail, a corrupt frame) aside into DIR/damaged/; nothing "
    "else is changed. A spool held by a running batcher cannot be opened (exit 1)."
)


def register(commands: Any) -> None:
    """Add the ``spool`` subcommand to the ``writebehind`` parser's subcommands."""
    spool: argparse.ArgumentParser = commands.add_parser(
        "spool",
        help="inspect, verify or replay a durable spool directory",
        description="Look into a batcher's spool (spool=DIR), or deliver what it holds.",
    )
    spool.set_defaults(command=lambda args: _usage(spool), command_name="spool")
    sub = spool.add_subparsers(title="spool commands", metavar="COMMAND")

    inspect = sub.add_parser(
        "inspect",
        help="records not yet done, oldest record's age, bytes, segments, damage",
        description="Print what the spool holds. " + _OPENS,
    )
    inspect.add_argument("dir", metavar="DIR", help="the spool directory")
    inspect.add_argument("--json", action="store_true", help="one JSON object")
    inspect.set_defaults(command=_inspect, command_name="spool inspect")

    verify = sub.add_parser(
        "verify",
        help="like inspect; exit 1 if the open found damage",
        description=(
            "Print what the spool holds and exit 0 if opening it found no damage, 1 if it "
            "moved damaged frames or done marks aside (listed). Files left in damaged/ by "
            "earlier opens are listed, not counted. " + _OPENS
        ),
    )
    verify.add_argument("dir", metavar="DIR", help="the spool directory")
    verify.add_argument("--json", action="store_true", help="one JSON object")
    verify.set_defaults(command=_verify, command_name="spool verify")

    replay = sub.add_parser(
        "replay",
        help="deliver what the spool holds to a SQLite or PostgreSQL table",
        description=(
            "Start a batcher with spool=DIR on a SQLite (--to-db) or PostgreSQL (--to-dsn) "
            "table: its start takes back the records not yet done, flush() delivers them, "
            "close() marks them done. Give --key and --version as the batcher that wrote the "
            "spool had them, so that its records coalesce the same way. A record the table "
            "refuses is dead-lettered: into --dead-letter PATH if given, else only counted "
            "(and gone from the spool). Exit 1 unless every record was delivered. " + _OPENS
        ),
    )
    replay.add_argument("dir", metavar="DIR", help="the spool directory")
    target = replay.add_mutually_exclusive_group()
    target.add_argument("--to-db", metavar="PATH", help="the SQLite file to write (SQLiteSink)")
    target.add_argument(
        "--to-dsn",
        metavar="DSN",
        type=dsn,
        help="the PostgreSQL to write (PostgresSink); env:NAME reads it from $NAME",
    )
    replay.add_argument("--to-table", type=identifier("table"), help="the table to write")
    replay.add_argument(
        "--to-schema", type=identifier("schema"), default="public", help="(PostgreSQL)"
    )
    replay.add_argument("--key", type=_names("key"), help="key column(s), comma separated")
    replay.add_argument("--version", type=_names("version"), help="the version column")
    replay.add_argument(
        "--dead-letter",
        metavar="PATH",
        help="a SQLite dead-letter file for records the table refuses (see writebehind dlq)",
    )
    replay.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        help="seconds to wait for delivery; what is not delivered stays spooled (default: 60)",
    )
    replay.add_argument("--dry-run", action="store_true", help="only count; deliver nothing")
    replay.set_defaults(command=_replay, command_name="spool replay")


def _names(what: str) -> Any:
    one = identifier(what)

    def parse(text: str) -> str | tuple[str, ...]:
        names = tuple(one(n.strip()) for n in text.split(","))
        return names[0] if len(names) == 1 else names

    return parse


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# -- opening ---------------------------------------------------------------------------
@dataclass(slots=True)
class Look:
    """What one open of the spool found."""

    path: str
    records: int
    recovered: int
    oldest_age: float | None
    bytes: int
    segments: int
    damaged_frames: int
    damaged_bytes: int
    damaged_done_bytes: int
    temp_files: int
    moved_aside: list[str]
    earlier: list[tuple[str, int]] = field(default_factory=list)  # damaged/ from before
    keys: int | None = None  # distinct keys among the records (replay --dry-run --key)

    @property
    def damaged(self) -> bool:
        return bool(self.damaged_frames or self.damaged_bytes or self.damaged_done_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "records": self.records,
            "recovered": self.recovered,
            "oldest_age": self.oldest_age,
            "bytes": self.bytes,
            "segments": self.segments,
            "damaged_frames": self.damaged_frames,
            "damaged_bytes": self.damaged_bytes,
            "damaged_done_bytes": self.damaged_done_bytes,
            "temp_files": self.temp_files,
            "moved_aside": self.moved_aside,
            "earlier_damage": [{"file": n, "bytes": b} for n, b in self.earlier],
        }


def _spool_dir(path: str) -> str:
    """``path`` made absolute, if it holds a spool; ``Unavailable`` (exit 1) if not: a
    mistyped path must not become a new spool."""
    from ..spool._dir import LOCK

    where = os.path.abspath(path)
    if not os.path.isdir(where):
        raise Unavailable(f"no spool directory at {where!r}")
    if not os.path.exists(os.path.join(where, LOCK)):
        raise Unavailable(
            f"{where!r} holds no spool (no lock file): a batcher's spool= directory has one"
        )
    return where


def _look(path: str, key: Any = None) -> Look:
    """Open the spool at ``path`` (recovering it), read its figures, close it."""
    from ..spool import SpoolLog
    from ..spool._recovery import DAMAGED

    where = _spool_dir(path)
    try:
        log = SpoolLog.open(where)
    except ConfigError as exc:  # held by a batcher, not ours, a newer format: not usage
        raise Unavailable(f"cannot open the spool {where!r}: {exc}") from None
    except OSError as exc:
        raise Unavailable(f"cannot read the spool {where!r}: {exc}") from None
    try:
        s, damage, records = log.stats(), log.damage, log.recovered()
    finally:
        log.close()
    moved = [os.path.basename(f) for f in damage.files]
    look = Look(
        path=where, records=s.spooled, recovered=s.recovered, oldest_age=s.oldest_age,
        bytes=s.bytes, segments=s.segments, damaged_frames=damage.frames,
        damaged_bytes=damage.bytes, damaged_done_bytes=damage.done_bytes,
        temp_files=damage.temp_files, moved_aside=moved,
    )  # fmt: skip
    aside = os.path.join(where, DAMAGED)
    if os.path.isdir(aside):
        for name in sorted(set(os.listdir(aside)) - set(moved)):
            try:
                look.earlier.append((name, os.path.getsize(os.path.join(aside, name))))
            except OSError:
                continue
    if key is not None:
        look.keys = len({_key_of(r, key) for _, r in records})
    return look


def _key_of(record: Any, key: str | tuple[str, ...]) -> Any:
    if not isinstance(record, dict):
        return ("record", id(record))
    names = (key,) if isinstance(key, str) else key
    return tuple(json.dumps(record.get(n), sort_keys=True, default=str) for n in names)


# -- printing --------------------------------------------------------------------------
def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _damage(look: Look) -> str:
    text = f"{look.damaged_frames:,} frames, {look.damaged_bytes:,} bytes"
    if look.damaged_done_bytes:
        text += f", {look.damaged_done_bytes:,} bytes of done marks"
    return text + (" moved aside into damaged/ by this open" if look.damaged else "")


def _show(look: Look) -> None:
    rows = [
        ("spool", printable(look.path)),
        ("records", f"{look.records:,} not done (what the next batcher delivers)"),
        ("recovered", f"{look.recovered:,}"),
        ("oldest", _age(look.oldest_age) + ("" if look.oldest_age is None else " ago")),
        ("bytes", f"{look.bytes:,} on disk"),
        ("segments", f"{look.segments:,}"),
        ("damaged", _damage(look)),
    ]
    if look.temp_files:
        rows.append(("temp files", f"{look.temp_files} left by an interrupted repair, deleted"))
    for name, text in rows:
        print(f"{name:<11}{text}")
    for name in look.moved_aside:
        print(f"  moved aside: damaged/{printable(name)}")
    if look.earlier:
        total = sum(b for _, b in look.earlier)
        print(f"{'earlier':<11}{len(look.earlier)} files, {total:,} bytes in damaged/")
        for name, size in look.earlier:
            print(f"  damaged/{printable(name)} ({size:,} bytes)")


def _inspect(args: argparse.Namespace) -> int:
    look = _look(args.dir)
    if args.json:
        print(json.dumps(look.to_dict(), ensure_ascii=False, sort_keys=True))
    else:
        _show(look)
    return 0


def _verify(args: argparse.Namespace) -> int:
    look = _look(args.dir)
    if args.json:
        print(json.dumps({**look.to_dict(), "ok": not look.damaged}, sort_keys=True))
    else:
        _show(look)
        verdict = "damage found (moved aside, listed above)" if look.damaged else "no damage found"
        print(f"{'verdict':<11}{verdict}")
    return 1 if look.damaged else 0


# -- replay ----------------------------------------------------------------------------
def _replay(args: argparse.Namespace) -> int:
    if not args.dry_run and not ((args.to_db or args.to_dsn) and args.to_table):
        raise ConfigError("replay: give the target, --to-db PATH or --to-dsn DSN, and --to-table")
    if args.version and not args.key:
        raise ConfigError("replay: --version needs --key")
    look = _look(args.dir, args.key)  # exit 1 now if the spool cannot be opened
    if look.damaged:
        print(
            f"damaged    {look.damaged_frames:,} frames, {look.damaged_bytes:,} bytes moved "
            "aside into damaged/ (not replayable)",
            file=sys.stderr,
        )
    if args.dry_run:
        print(f"records       {look.records:,}")
        if look.keys is not None:
            print(f"distinct keys {look.keys:,}")
        return 0
    secrets = secrets_of(args.to_dsn) if args.to_dsn else ()
    try:
        return asyncio.run(_deliver(args, look.path))
    except ConfigError as exc:
        if look.path in str(exc):  # the spool (taken meanwhile): it cannot be opened
            raise Unavailable(scrub_secrets(str(exc), secrets)) from None
        raise ConfigError(scrub_secrets(str(exc), secrets)) from None
    except (WriteBehindError, OSError) as exc:  # the target cannot be reached or opened
        where = args.to_db if args.to_db else redact_dsn(args.to_dsn)
        message = scrub_secrets(f"{type(exc).__name__}: {exc}", secrets)
        raise Unavailable(f"cannot write to {where!r}: {message}") from None


async def _deliver(args: argparse.Namespace, spool: str) -> int:
    from .. import AsyncBatcher, PostgresSink, SQLiteSink
    from ..dlq import SQLiteDeadLetter

    key, version = args.key, args.version
    if args.to_db:
        sink: Any = SQLiteSink(args.to_db, table=args.to_table, key=key, version=version)
    else:
        sink = PostgresSink(
            args.to_dsn, table=args.to_table, schema=args.to_schema, key=key, version=version
        )
    dead = SQLiteDeadLetter(args.dead_letter) if args.dead_letter else None
    batcher = AsyncBatcher(
        sink, key=key, version=version, spool=spool, dead_letter=dead, name="spool-replay"
    )
    await batcher.start()
    timed_out = False
    try:
        await batcher.flush(timeout=args.timeout)
    except TimeoutError:
        timed_out = True
    finally:
        report = await batcher.close(timeout=5.0)
    s = report.stats
    left = max(report.spooled, s.spooled)
    for name, value in (
        ("recovered", s.recovered),
        ("committed", s.committed),
        ("coalesced", s.coalesced),
        ("dead_lettered", s.dead_lettered),
        ("left", left),
    ):
        print(f"{name:<14}{value:,}")
    if timed_out:
        print(
            f"not delivered within --timeout {args.timeout:g} s; left in the spool", file=sys.stderr
        )
    if s.dead_lettered and dead is None:
        print(
            "dead-lettered records were refused by the table and only counted (no "
            "--dead-letter PATH); they are no longer in the spool",
            file=sys.stderr,
        )
    return 0 if left == 0 and s.dead_lettered == 0 and report.lost == 0 else 1
