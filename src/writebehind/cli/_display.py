"""How the CLI shows things: a live rich view, or plain lines, for ``demo`` and ``top``.

``rich`` is imported only here, only when a rich display is asked for, and only if it is
installed (the ``writebehind[cli]`` extra); otherwise the plain form is used. This is the
one place that falls back from rich to plain, and that drives a ``rich.live.Live``.

- :func:`make_display`: the demo's progress line and final table (the plain display prints
  one line a second and a plain two-column table at the end).
- :func:`make_screen`: a :class:`Screen` that shows a :class:`View` (something that renders
  as text lines and as a rich renderable) once, or live, refreshed in place (``top``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

__all__ = ["Display", "Progress", "Row", "Screen", "View", "make_display", "make_screen"]

Row = tuple[str, str]
"""One line of the final table: (label, value)."""

_PLAIN_EVERY = 4  # the demo updates ~4x/s; the plain display prints one line a second


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of the run for the live display."""

    elapsed: float
    sent: int
    pending: int
    in_flight: int
    committed: int
    statements: int
    coalesced: int


class Display(Protocol):
    """Where the demo reports."""

    def start(self, title: str) -> None: ...

    def update(self, progress: Progress) -> None: ...

    def stop(self) -> None: ...

    def note(self, text: str) -> None: ...

    def final(self, title: str, rows: list[Row]) -> None: ...


def _terminal(out: TextIO | None) -> bool:
    """Whether ``out`` (default: stdout) is a terminal. Rich output into a pipe or a file
    would be wrapped and padded to 80 columns: not what a script reading it wants."""
    stream = out if out is not None else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def make_display(*, plain: bool, out: TextIO | None = None) -> Display:
    """A rich live display, or the plain one when ``plain`` is set, rich is missing, or the
    output is not a terminal."""
    if not plain and _terminal(out):
        try:
            return _RichDisplay(out)
        except ImportError:
            pass
    return _PlainDisplay(out)


class View(Protocol):
    """What a :class:`Screen` shows: the same content as text lines and as rich."""

    def lines(self) -> list[str]: ...

    def renderable(self) -> RenderableType: ...


class Screen(Protocol):
    """Shows a :class:`View`: printed once, or live (refreshed in place)."""

    def show(self, view: View) -> None: ...

    def stop(self) -> None: ...


def make_screen(*, plain: bool, live: bool, out: TextIO | None = None) -> Screen:
    """A rich screen, or the plain one when ``plain`` is set, rich is missing, or the output
    is not a terminal. ``live``: each :meth:`Screen.show` replaces the last (rich) or
    follows it after a blank line."""
    if not plain and _terminal(out):
        try:
            return _RichScreen(out, live=live)
        except ImportError:
            pass
    return _PlainScreen(out, live=live)


class _PlainScreen:
    def __init__(self, out: TextIO | None, *, live: bool) -> None:
        self._out, self._live = out, live

    def show(self, view: View) -> None:
        text = "\n".join(view.lines()) + ("\n" if self._live else "")
        print(text, file=self._out or sys.stdout, flush=True)

    def stop(self) -> None:
        pass


class _LiveSlot:
    """One ``rich.live.Live`` on a console: started by the first update, refreshed on each
    one (no auto-refresh thread), stopped once."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live

        self._live_type: type[Live] = Live
        self._console = console
        self._live: Live | None = None

    def update(self, renderable: RenderableType) -> None:
        if self._live is None:
            self._live = self._live_type(renderable, console=self._console, auto_refresh=False)
            self._live.start(refresh=True)
        else:
            self._live.update(renderable, refresh=True)

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()
            if not self._console.is_terminal:
                self._console.line()  # a terminal gets its newline from Live


class _RichScreen:
    def __init__(self, out: TextIO | None, *, live: bool) -> None:
        from rich.console import Console

        self._console = Console(file=out)
        self._slot = _LiveSlot(self._console) if live else None

    def show(self, view: View) -> None:
        if self._slot is None:
            self._console.print(view.renderable())
        else:
            self._slot.update(view.renderable())

    def stop(self) -> None:
        if self._slot is not None:
            self._slot.stop()


_COLUMNS = ("elapsed", "sent", "pending", "in flight", "committed", "statements", "coalesced")


def _cells(p: Progress) -> tuple[str, ...]:
    return (
        f"{p.elapsed:.1f} s",
        f"{p.sent:,}",
        f"{p.pending:,}",
        f"{p.in_flight:,}",
        f"{p.committed:,}",
        f"{p.statements:,}",
        f"{p.coalesced:,}",
    )


class _PlainDisplay:
    def __init__(self, out: TextIO | None) -> None:
        self._out = out
        self._updates = 0
        self._last: Progress | None = None

    def _print(self, text: str = "") -> None:
        print(text, file=self._out or sys.stdout, flush=True)

    def start(self, title: str) -> None:
        self._print(title)

    def update(self, progress: Progress) -> None:
        self._last = progress
        self._updates += 1
        if self._updates % _PLAIN_EVERY == 1:
            self._line(progress)

    def _line(self, p: Progress) -> None:
        cells = _cells(p)
        self._print("  " + "  ".join(f"{c} {v}" for c, v in zip(_COLUMNS, cells, strict=True)))

    def stop(self) -> None:
        if self._last is not None and self._updates % _PLAIN_EVERY != 1:
            self._line(self._last)  # the final state, unless it was just printed

    def note(self, text: str) -> None:
        self._print(text)

    def final(self, title: str, rows: list[Row]) -> None:
        width = max(len(label) for label, _ in rows)
        self._print()
        self._print(title)
        for label, value in rows:
            self._print(f"  {label:<{width}}  {value}")


class _RichDisplay:
    def __init__(self, out: TextIO | None) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        self._started = False
        self._text_type: type[Text] = Text
        self._table_type: type[Table] = Table
        self._console: Console = Console(file=out)
        self._slot = _LiveSlot(self._console)
        self._title = ""

    def _progress_table(self, p: Progress | None) -> Table:
        table = self._table_type(title=self._title, title_justify="left")
        for column in _COLUMNS:
            table.add_column(column, justify="right")
        table.add_row(*(_cells(p) if p is not None else ("-",) * len(_COLUMNS)))
        return table

    def start(self, title: str) -> None:
        self._title = title
        self._started = True
        self._slot.update(self._progress_table(None))

    def update(self, progress: Progress) -> None:
        if self._started:
            self._slot.update(self._progress_table(progress))

    def stop(self) -> None:
        self._started = False
        self._slot.stop()

    def note(self, text: str) -> None:
        self._console.print(text, highlight=False, markup=False)

    def final(self, title: str, rows: list[Row]) -> None:
        table = self._table_type(title=title, title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for label, value in rows:
            table.add_row(self._text_type(label), self._text_type(value))
        self._console.print()
        self._console.print(table)
