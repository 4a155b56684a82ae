"""The ``writebehind`` entry point: argument parsing and dispatch to the subcommands.

``main(argv)`` never calls ``sys.exit`` itself: it returns the exit code (0 success, 1 the
demo found a problem, 2 a usage error, 130 interrupted), so tests can call it directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .. import ConfigError, __version__
from ._args import Unavailable
from ._text import printable

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
    except ConfigError as exc:  # its message may quote stored data or a path: escaped
        print(f"writebehind {args.command_name}: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except Unavailable as exc:  # a database that cannot be opened or reached: not usage
        print(f"writebehind {args.command_name}: error: {printable(str(exc))}", file=sys.stderr)
        return 1
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

    from . import _demo_args, dlq, spool, top  # each subcommand module adds its own parser

    for module in (_demo_args, dlq, spool, top):
        module.register(commands)
    return parser


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
