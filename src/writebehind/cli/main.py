"""The ``writebehind`` entry point: argument parsing and dispatch to the subcommands.

``main(argv)`` never calls ``sys.exit`` itself: it returns the exit code (0 success, 1 the
demo found a problem, 2 a usage error, 130 interrupted), so tests can call it directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .. import ConfigError, __version__

__all__ = ["build_parser", "main"]

Command = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Run the ``writebehind`` command line with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_code(exc.code)
    command: Command | None = getattr(args, "command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return command(args)
    except ConfigError as exc:
        print(f"writebehind {args.command_name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"writebehind {args.command_name}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``writebehind`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="writebehind",
        description="Batch the many small writes a service makes into a datastore.",
    )
    parser.add_argument("--version", action="version", version=f"writebehind {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="simulate a fleet of agents sending heartbeats into SQLite",
        description=(
            "Simulate AGENTS agents, each sending a heartbeat every INTERVAL seconds for "
            "DURATION seconds (phases spread evenly), into an embedded SQLite database through "
            "an AsyncBatcher; then replay the same workload with one statement and one commit "
            "per heartbeat, and compare."
        ),
    )
    demo.set_defaults(command=_run_demo, command_name="demo")
    demo.add_argument(
        "--agents", type=_positive_int, default=10_000, help="agents (default: 10000)"
    )
    demo.add_argument(
        "--duration",
        type=_positive_float,
        default=5.0,
        help="seconds to send heartbeats for (default: 5)",
    )
    demo.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        help="seconds between one agent's heartbeats (default: 1.0)",
    )
    demo.add_argument(
        "--db",
        metavar="PATH",
        help="the SQLite file to write, kept afterwards (default: a temporary file)",
    )
    demo.add_argument(
        "--dsn", help="a PostgreSQL DSN (not available yet: the PostgreSQL sink is coming)"
    )
    demo.add_argument(
        "--max-batch",
        type=_positive_int,
        default=500,
        help="the most heartbeats in one write (default: 500)",
    )
    demo.add_argument(
        "--linger",
        type=_non_negative_float,
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
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    if args.dsn is not None:
        print(
            "writebehind demo: error: the PostgreSQL sink is not available yet; "
            "use --db PATH (SQLite) for now",
            file=sys.stderr,
        )
        return 2
    from .demo import DemoConfig, run  # the demo's imports cost nothing for --help

    config = DemoConfig(
        agents=args.agents,
        duration=args.duration,
        interval=args.interval,
        db=args.db,
        max_batch=args.max_batch,
        linger=args.linger,
        naive=args.naive,
        plain=args.plain,
    )
    return run(config)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
