"""Spool: the spool's small frozen configuration, validated with ConfigError."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import writebehind as wb
from writebehind.spool import Spool


def test_defaults(tmp_path: Path) -> None:
    """A path alone gives 1 GiB, group commit and 16 MiB segments."""
    s = Spool(tmp_path)
    assert (s.max_bytes, s.fsync, s.segment_bytes) == (1 << 30, "batch", 16 << 20)


def test_segment_default_follows_a_small_max(tmp_path: Path) -> None:
    """With a small max_bytes the default segment is a quarter of it."""
    assert Spool(tmp_path, max_bytes=1 << 20).segment_bytes == 1 << 18


def test_frozen(tmp_path: Path) -> None:
    """A Spool cannot be changed once made."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        Spool(tmp_path).max_bytes = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"max_bytes": 10}, "max_bytes"),
        ({"max_bytes": 2.5}, "max_bytes"),
        ({"max_bytes": True}, "max_bytes"),
        ({"fsync": "always"}, "fsync"),
        ({"segment_bytes": 100}, "segment_bytes"),
        ({"max_bytes": 1 << 20, "segment_bytes": 1 << 19}, "segment_bytes"),
    ],
)
def test_bad_values_name_the_argument(
    tmp_path: Path, kwargs: dict[str, object], names: str
) -> None:
    """Every bad value is a ConfigError that starts with the argument's name."""
    with pytest.raises(wb.ConfigError, match=f"^{names}: "):
        Spool(tmp_path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["", 5, None])
def test_bad_path(path: object) -> None:
    """The path must be a non-empty str or PathLike."""
    with pytest.raises(wb.ConfigError, match=r"^path: "):
        Spool(path)  # type: ignore[arg-type]


def test_of(tmp_path: Path) -> None:
    """Spool.of takes a Spool as it is and a path with the defaults."""
    s = Spool(tmp_path, fsync="never")
    assert Spool.of(s) is s
    assert Spool.of(str(tmp_path)) == Spool(str(tmp_path))
