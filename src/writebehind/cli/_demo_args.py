"""``writebehind demo``: its arguments (the demo itself is imported only when it runs)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import ConfigError
from ._args import dsn, identifier, integer, non_negative_float, positive_float

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
        default=None,
        help="seconds to send heartbeats for (default: 5; 20 with --fleet, 10 with --hosts)",
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
        type=dsn,
        help=(
            "write to PostgreSQL instead (postgresql://user[:password]@host[:port]/db) through "
            "PostgresSink; the table is created if missing and kept; env:NAME reads the DSN "
            "from $NAME"
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
    fleet = demo.add_argument_group(
        "fleet",
        "--fleet N runs N processes heartbeating into one PostgreSQL table (--dsn) through one "
        "RedisSharedCapacity of --capacity records per second, and prints each instance's rate "
        "and the fleet's against it",
    )
    fleet.add_argument("--fleet", type=_positive_int, metavar="N", help="instances (processes)")
    fleet.add_argument(
        "--capacity", type=positive_float, metavar="C", help="the fleet's records per second"
    )
    fleet.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/0",
        metavar="URL",
        help=(
            "the Redis the instances lease capacity through, or (--hosts) the stream's "
            "(default: redis://127.0.0.1:6379/0)"
        ),
    )
    fleet.add_argument(
        "--reserved",
        type=non_negative_float,
        default=0.0,
        metavar="R",
        help="records per second each instance has without a lease (default: 0)",
    )
    fleet.add_argument(
        "--lease",
        type=positive_float,
        default=15.0,
        metavar="SECONDS",
        help="how long a partition's lease lasts without renewal (default: 15)",
    )
    hosts = demo.add_argument_group(
        "hosts",
        "--hosts N runs N producer processes and --flushers M flusher processes with one Redis "
        "stream between them (RedisStreamSink, consume_stream) into one PostgreSQL table "
        "(--dsn), and prints the rates on both sides and the stream's lag (uses --redis)",
    )
    hosts.add_argument("--hosts", type=_positive_int, metavar="N", help="producer processes")
    hosts.add_argument(
        "--flushers",
        type=_positive_int,
        default=2,
        metavar="M",
        help="flusher processes (default: 2)",
    )


def _run(args: argparse.Namespace) -> int:
    if args.hosts is not None:
        return _run_hosts(args)
    if args.fleet is not None or args.capacity is not None:
        return _run_fleet(args)
    from .demo import DemoConfig, run  # the demo's imports cost nothing for --help

    config = DemoConfig(
        agents=args.agents,
        duration=5.0 if args.duration is None else args.duration,
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


def _run_fleet(args: argparse.Namespace) -> int:
    if args.fleet is None or args.capacity is None:
        raise ConfigError("--fleet N and --capacity C go together: give both")
    if args.dsn is None:
        raise ConfigError("--fleet writes to PostgreSQL: give --dsn postgresql://...")
    from .fleet import FleetConfig, run_fleet

    return run_fleet(
        FleetConfig(
            instances=args.fleet, capacity=args.capacity, dsn=args.dsn, redis=args.redis,
            reserved=args.reserved, lease=args.lease, agents=args.agents,
            duration=20.0 if args.duration is None else args.duration, table=args.table,
            reset=args.reset,
        )
    )  # fmt: skip


def _run_hosts(args: argparse.Namespace) -> int:
    if args.fleet is not None or args.capacity is not None:
        raise ConfigError("--hosts and --fleet are two demos: give one of them")
    if args.dsn is None:
        raise ConfigError("--hosts writes to PostgreSQL: give --dsn postgresql://...")
    from .hosts import HostsConfig, run_hosts

    return run_hosts(
        HostsConfig(
            producers=args.hosts, flushers=args.flushers, dsn=args.dsn, redis=args.redis,
            agents=args.agents, duration=10.0 if args.duration is None else args.duration,
            table=args.table, reset=args.reset,
        )
    )  # fmt: skip


_positive_int = integer(1)
_table_name = identifier("table")


def _max_batch(text: str) -> int | None:
    """``auto`` (None: the demo picks) or an integer >= 1."""
    return None if text.strip().lower() == "auto" else _positive_int(text)
