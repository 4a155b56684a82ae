"""sinks/_protocol.key_mismatch: a sink whose key/version differ from the batcher's is refused
or warned about at start (the engine's start() calls check_sink_keys)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.sinks._protocol import check_sink_keys, key_mismatch


def sqlite(tmp_path: Path, **kw: Any) -> wb.SQLiteSink:
    return wb.SQLiteSink(tmp_path / "x.db", table="t", **kw)


@pytest.mark.parametrize(
    ("batcher", "sink"),
    [
        ({"key": "id", "version": "v"}, {"key": "id", "version": "v"}),
        ({"key": ("a", "b")}, {"key": ("b", "a")}),  # the same columns, in any order
        ({}, {"key": "id", "version": "v"}),  # no coalescing: the sink's key decides
        ({"key": lambda r: r["id"]}, {"key": "other"}),  # a callable: cannot compare
        ({"key": "id", "version": lambda r: r["v"]}, {"key": "id", "version": "v"}),
        ({"key": "id", "version": "v"}, {"key": "id"}),  # the sink overwrites: fine
    ],
)
def test_agreeing_or_incomparable_options_pass(
    tmp_path: Path, batcher: dict[str, Any], sink: dict[str, Any]
) -> None:
    """Equal keys and versions, a batcher without key, or a callable, raise no problem."""
    assert (
        key_mismatch(batcher.get("key"), batcher.get("version"), sqlite(tmp_path, **sink)) is None
    )


@pytest.mark.parametrize(
    ("batcher", "sink", "fatal", "words"),
    [
        ({"key": "id"}, {"key": ("tenant", "id")}, True, ["'id'", "('id', 'tenant')", "same key"]),
        ({"key": "agent"}, {"key": "id"}, True, ["'agent'", "'id'"]),
        ({"key": "id", "version": "seq"}, {"key": "id", "version": "v"}, True, ["'seq'", "'v'"]),
        ({"key": "id"}, {}, False, ["'id'", "no key"]),
        ({"key": "id"}, {"key": "id", "version": "v"}, False, ["version='v'"]),
    ],
)
def test_disagreeing_options_are_refused_or_warned(
    tmp_path: Path, batcher: dict[str, Any], sink: dict[str, Any], fatal: bool, words: list[str]
) -> None:
    """Different keys or versions are fatal; a key on one side only, or a version on the
    sink's side only, is a warning; each message names both sides and the fix."""
    problem = key_mismatch(batcher.get("key"), batcher.get("version"), sqlite(tmp_path, **sink))
    assert problem is not None
    assert problem.fatal is fatal
    for word in words:
        assert word in problem.message


def test_sinks_without_named_columns_are_not_compared() -> None:
    """A CallableSink or a user's own sink has no key to compare."""
    assert key_mismatch("id", "v", wb.CallableSink(lambda batch: None)) is None
    assert key_mismatch("id", "v", object()) is None


def test_check_sink_keys_raises_or_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """check_sink_keys raises ConfigError for a fatal mismatch and logs one WARNING naming
    both sides for the others."""
    with pytest.raises(wb.ConfigError, match="key: the batcher's key 'agent'"):
        check_sink_keys("agent", None, sqlite(tmp_path, key="id"))
    caplog.set_level(logging.WARNING, logger="writebehind")
    check_sink_keys("id", None, sqlite(tmp_path))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "'id'" in caplog.records[0].getMessage()
    check_sink_keys("id", "v", sqlite(tmp_path, key="id", version="v"))
    assert len(caplog.records) == 1


async def test_a_batcher_refuses_a_sink_keyed_differently_at_start(tmp_path: Path) -> None:
    """Wired into start(): the batcher refuses the sink before opening it, with the error
    naming both keys; nothing was accepted."""
    import sqlite3

    path = tmp_path / "x.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (id TEXT PRIMARY KEY, other TEXT, v INTEGER)")
    batcher = wb.AsyncBatcher(wb.SQLiteSink(path, table="t", key="id"), key="other")
    with pytest.raises(wb.ConfigError) as caught:
        await batcher.start()
    assert "other" in str(caught.value)
    assert "id" in str(caught.value)
    assert batcher.stats().accepted == 0
