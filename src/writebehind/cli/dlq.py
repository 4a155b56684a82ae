"""``writebehind dlq``: placeholder, being built."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the ``dlq`` subcommand to the ``writebehind`` parser's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser("dlq", help="(being built)")
    parser.set_defaults(command=lambda args: 2, command_name="dlq")
