"""The public surface: __all__ is exactly what the package exports, shown as writebehind.X."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import writebehind as wb

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = re.compile(r"\b(?:wb|writebehind)\.([A-Z][A-Za-z0-9_]*)\b")


def test_all_names_exist_and_nothing_else_is_public() -> None:
    """Every name in __all__ exists, and every public attribute is in __all__."""
    public = {
        n for n in dir(wb) if not n.startswith("_") and not isinstance(getattr(wb, n), ModuleType)
    }
    assert set(wb.__all__) == public
    for name in wb.__all__:
        assert getattr(wb, name) is not None


def test_every_name_the_docs_and_examples_use_is_exported() -> None:
    """Each ``wb.Name`` / ``writebehind.Name`` that README.md, docs/ and examples/ show a
    user is a public name of the package (a rename that forgets the docs fails here)."""
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.py")]
    used: dict[str, str] = {}
    for path in files:
        for name in DOCUMENTED.findall(path.read_text()):
            used.setdefault(name, path.name)
    assert len(used) >= 20, sorted(used)  # the scan found the names it is meant to check
    missing = {name: where for name, where in used.items() if name not in wb.__all__}
    assert not missing, missing


def test_public_classes_show_the_package_name() -> None:
    """Reprs and docs show writebehind.AsyncBatcher, not the private module."""
    for name in wb.__all__:
        obj = getattr(wb, name)
        if isinstance(obj, type):
            assert obj.__module__ == "writebehind", name


def test_type_hints_resolve_on_every_public_name() -> None:
    """typing.get_type_hints() works on the public classes and functions (the __module__
    rewrite made it raise NameError on Stats, RetryPolicy and DeadLetterEntry)."""
    import typing

    for name in wb.__all__:
        obj = getattr(wb, name)
        if isinstance(obj, type) or callable(obj):
            typing.get_type_hints(obj)


def test_all_is_sorted() -> None:
    """__all__ is sorted, so a missing or doubled name shows in review."""
    assert list(wb.__all__) == sorted(wb.__all__)


def test_errors_share_one_root() -> None:
    """Every exception is a WriteBehindError; usage errors are also ValueErrors."""
    for exc in (
        wb.ConfigError,
        wb.RecordError,
        wb.BufferFull,
        wb.BatcherClosed,
        wb.SinkError,
        wb.RetriableSinkError,
        wb.PermanentSinkError,
        wb.WriteTimeout,
        wb.SinkMisconfigured,
        wb.EntriesNotStored,
        wb.SubscriberLagged,
        wb.RecordNotReplayable,
    ):
        assert issubclass(exc, wb.WriteBehindError)
    assert issubclass(wb.ConfigError, ValueError)
    assert issubclass(wb.RecordError, ValueError)
