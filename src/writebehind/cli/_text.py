"""Text the command line prints for people: stored data made safe for a terminal.

Dead-letter messages and records are data from anywhere; printed raw, an ``ESC`` sequence in
one can clear the screen, retitle the window, hide lines or forge others, and a lone
surrogate makes ``print`` raise. :func:`printable` escapes every character a terminal would
act on instead of showing. Machine-readable output (``--json``) is never passed through it:
it stays exact.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-byte CSI), lone
# surrogates, and the bidirectional overrides and isolates that reorder what is shown
_UNSAFE = (
    r"\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 (not tab, newline), DEL, C1
    r"\ud800-\udfff"  # lone surrogates
    r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks and overrides
)
_ESCAPE = re.compile(f"[{_UNSAFE}]")
_ESCAPE_ALL = re.compile(f"[{_UNSAFE}\\t\\n]")


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with terminal controls escaped as Python writes them (``\\x1b``,
    ``\\u202e``, ``\\udce9``). With ``lines``, tabs and newlines are kept (a multi-line
    message or indented JSON); without, they are escaped too (one line of a table)."""
    pattern = _ESCAPE if lines else _ESCAPE_ALL
    if pattern.search(text) is None:
        return text
    return pattern.sub(lambda m: ascii(m.group())[1:-1], text)
