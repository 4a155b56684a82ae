"""The sync facade cannot drift from the async core: every method both have takes the same
parameters (names, kinds, defaults), in the spirit of httpcore's ``unasync.py --check``."""

from __future__ import annotations

import inspect

import writebehind as wb

# the facade's own extras (a thread API needs them) and the core's async-only ones
ONLY_SYNC = {"engine"}
ONLY_ASYNC = {"options", "dead_letter"}


def _public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_both_apis_have_the_same_methods() -> None:
    """A public name on one API is on the other, apart from the listed exceptions."""
    assert _public(wb.Batcher) - ONLY_SYNC == _public(wb.AsyncBatcher) - ONLY_ASYNC


def test_shared_methods_take_the_same_parameters() -> None:
    """Each shared method's parameters match (this failed for flush(timeout): positional in
    the facade, keyword-only in the core)."""
    shared = (_public(wb.Batcher) & _public(wb.AsyncBatcher)) | {"__init__"}
    for name in sorted(shared):
        sync, core = getattr(wb.Batcher, name), getattr(wb.AsyncBatcher, name)
        if isinstance(sync, property) or isinstance(core, property):
            assert isinstance(sync, property) == isinstance(core, property), name
            continue
        assert _params(sync) == _params(core), name


def test_both_constructors_take_the_declared_options() -> None:
    """Both constructors take **options typed by the one TypedDict."""
    for cls in (wb.Batcher, wb.AsyncBatcher):
        params = inspect.signature(cls.__init__).parameters
        assert [p.kind for p in params.values()][-1] is inspect.Parameter.VAR_KEYWORD
        assert "BatcherOptions" in str(params["options"].annotation)
