"""``writebehind demo``: its arguments (the demo itself is imported only when it runs)."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import identifier, integer, non_negative_float, positive_float

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the ``demo`` subcommand to the ``writebehind`` parser's subcommands."""
    demo = commands.add_parser(
        "demo",
        help="simulate a fleet of agents sending heartbeats into SQLite or PostgreSQL",
        description=(
            "Simulate AGENTS agents, each sending a heartbeat every INTERVAL seconds for "
            "DURATION seconds (phases spread evenly), through an AsyncBatcher into an embedded "
            "SQLite database (or PostgreSQL with --dsn); then replay the same workload with one "
            "statement and one commit per heartbeat, and compare. By default agents heartbeat "
            "more often than the linger window and only the linger cuts batches, so each "
            "agent's heartbeats coalesce to about one row per window (LINGER / INTERVAL "
            "heartbeats per row)."
        ),
    )
    demo.set_defaults(command=_run, command_name="demo")
    demo.add_argument(
        "--agents", type=_positive_int, default=10_000, help="agents (default: 10000)"
    )
    demo.add_argument(
        "--duration",
        type=positive_float,
        default=5.0,
        help="seconds to send heartbeats for (default: 5)",
    )
    demo.add_argument(
        "--interval",
        type=positive_float,
        default=0.5,
        help="seconds between one agent's heartbeats (default: 0.5)",
    )
    where = demo.add_mutually_exclusive_group()
    where.add_argument(
        "--db",
        metavar="PATH",
        help="the SQLite file to write, kept afterwards (default: a temporary file)",
    )
    where.add_argument(
        "--dsn",
        help=(
            "write to PostgreSQL instead (postgresql://user[:password]@host[:port]/db) through "
            "PostgresSink; the table is created if missing and kept"
        ),
    )
    demo.add_argument(
        "--table",
        type=_table_name,
        default="agent_heartbeats",
        help="the table to write (default: agent_heartbeats)",
    )
    demo.add_argument(
        "--reset",
        action="store_true",
        help="empty the table first (without it, rows of earlier runs stay)",
    )
    demo.add_argument(
        "--max-batch",
        type=_max_batch,
        default=None,
        metavar="N|auto",
        help=(
            "the most heartbeats in one write (default: auto, twice the agents: pending "
            "heartbeats, at most one per agent, never reach it, so only the linger cuts "
            "batches; at or below the agents, the size cuts them before anything coalesces)"
        ),
    )
    demo.add_argument(
        "--linger",
        type=non_negative_float,
        default=2.0,
        help="seconds a heartbeat may wait before a flush (default: 2.0)",
    )
    demo.add_argument(
        "--no-naive",
        dest="naive",
        action="store_false",
        help="skip the comparison with one statement and one commit per heartbeat",
    )
    demo.add_argument(
        "--plain", action="store_true", help="plain text lines instead of a live rich table"
    )


def _run(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run  # the demo's imports cost nothing for --help

    config = DemoConfig(
        agents=args.agents,
        duration=args.duration,
        interval=args.interval,
        db=args.db,
        dsn=args.dsn,
        table=args.table,
        reset=args.reset,
        max_batch=args.max_batch,
        linger=args.linger,
        naive=args.naive,
        plain=args.plain,
    )
    return run(config)


_positive_int = integer(1)
_table_name = identifier("table")


def _max_batch(text: str) -> int | None:
    """``auto`` (None: the demo picks) or an integer >= 1."""
    return None if text.strip().lower() == "auto" else _positive_int(text)
