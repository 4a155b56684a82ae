"""Argument types shared by the ``writebehind`` subcommands: each parses one value or raises
``argparse.ArgumentTypeError`` with a message that names what was wrong."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from .._errors import ConfigError
from .._ident import validate

__all__ = ["dsn", "identifier", "integer", "non_negative_float", "number", "positive_float"]


def integer(low: int) -> Callable[[str], int]:
    """An integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def identifier(what: str) -> Callable[[str], str]:
    """A SQL identifier (table, schema, column), validated as the sinks validate it."""

    def parse(text: str) -> str:
        try:
            return validate(text, what)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def number(text: str) -> float:
    """A finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def dsn(text: str) -> str:
    """A DSN, or ``env:NAME`` to read it from the environment variable NAME (so a password
    need not appear on the command line, where ``ps`` shows it)."""
    if not text.startswith("env:"):
        return text
    name = text[4:]
    value = os.environ.get(name)
    if not name or not value:
        raise argparse.ArgumentTypeError(f"environment variable {name!r} is not set or empty")
    return value


class Unavailable(Exception):
    """What a command needs is not there (a database that cannot be opened or reached): exit
    status 1 with a one-line message, unlike a usage error (2)."""
