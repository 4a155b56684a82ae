"""SQL identifiers: validated when a sink is constructed, and quoted anyway."""

from __future__ import annotations

import re

from ._errors import ConfigError

__all__ = ["quote", "validate"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def validate(name: object, what: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise ``ConfigError``."""
    if not isinstance(name, str) or _IDENT.fullmatch(name) is None:
        raise ConfigError(
            f"{what}: {name!r} is not an allowed name; use letters, digits and underscores, "
            f"starting with a letter or underscore, at most 63 characters"
        )
    return name


def quote(name: str) -> str:
    """Double-quote a validated identifier."""
    return '"' + name.replace('"', '""') + '"'
