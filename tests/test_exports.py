"""The public surface: __all__ is exactly what the package exports, shown as writebehind.X."""

from __future__ import annotations

from types import ModuleType

import writebehind as wb

DESIGN_NAMES = {
    "AsyncBatcher",
    "Batcher",
    "BufferFull",
    "CloseReport",
    "Outcome",
    "RetryPolicy",
    "SQLiteSink",
    "CallableSink",
    "Stats",
    "WriteBehindError",
    "ConfigError",
    "BatcherClosed",
}


def test_all_names_exist_and_nothing_else_is_public() -> None:
    """Every name in __all__ exists, and every public attribute is in __all__."""
    public = {
        n for n in dir(wb) if not n.startswith("_") and not isinstance(getattr(wb, n), ModuleType)
    }
    assert set(wb.__all__) == public
    for name in wb.__all__:
        assert getattr(wb, name) is not None


def test_design_contract_names_are_present() -> None:
    """The names DESIGN.md promises users are exported."""
    assert set(wb.__all__) >= DESIGN_NAMES


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
