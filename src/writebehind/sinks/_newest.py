"""Which of a batch's records with one key is written: the newest, in both SQL sinks.

A batch holds one record per key when a batcher that coalesces by the sink's key cut it. A
sink written alone, or behind a batcher without that key, may get one key several times;
then the newest is written (the greatest version; on a tie, or without a version, the later
one; a NULL version loses to one), and the others are stale (``report_stale``). Within one
record shape each sink keeps the newest itself (``_pg.newest_per_key``, psycopg's
``DISTINCT ON``, SQLite's rows applied in order under the version condition). Across
shapes it is decided here, before the shapes' statements run one after another: otherwise
the shape written last would win whatever its age.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._errors import PermanentSinkError
from ._records import Rows
from ._stale import Where, group_indexed

__all__ = ["newer_or_equal", "newest_across_shapes"]


def newer_or_equal(a: Any, b: Any) -> bool:
    """Whether version ``a`` wins over ``b`` (a NULL loses; a tie wins: the later row)."""
    if b is None:
        return True
    if a is None:
        return False
    try:
        return bool(a >= b)
    except TypeError as exc:
        raise PermanentSinkError(f"versions {a!r} and {b!r} cannot be compared") from exc


def newest_across_shapes(
    batch: list[Any], groups: Rows, where: Where, key: tuple[str, ...], version: str | None,
    increment: tuple[str, ...] = (),
) -> tuple[Rows, Where, list[int]]:  # fmt: skip
    """``groups`` (and ``where``, if tracked) without every record of a key that is not its
    newest, when the key comes in more than one record shape; and the batch indexes of
    those left out. One shape (the usual batch), no key, or ``increment=`` (every delta
    adds, whatever its shape): nothing is left out."""
    if len(groups) < 2 or not key or increment:
        return groups, where, []
    at = where or group_indexed(batch)[1]  # the batch index of each row
    newest: dict[Any, tuple[Any, int, tuple[str, ...], int]] = {}  # version, index, shape, n
    shapes: dict[Any, set[tuple[str, ...]]] = {}
    keys: dict[tuple[str, ...], list[Any]] = {}  # each group's row keys, in row order
    try:
        for names, rows in groups.items():
            kidx = [names.index(k) for k in key]
            vidx = names.index(version) if version is not None and version in names else None
            row_keys = keys[names] = []
            for n, (row, i) in enumerate(zip(rows, at[names], strict=True)):
                k = row[kidx[0]] if len(kidx) == 1 else tuple(row[j] for j in kidx)
                row_keys.append(k)
                v = None if vidx is None else row[vidx]
                shapes.setdefault(k, set()).add(names)
                old = newest.get(k)
                if old is None or _wins(v, i, old[0], old[1], version is not None):
                    newest[k] = (v, i, names, n)
    except (TypeError, ValueError):  # a key that cannot be hashed: the sink's checks say so
        return groups, where, []
    crossed = {k for k, seen in shapes.items() if len(seen) > 1}
    if not crossed:
        return groups, where, []
    keep: dict[tuple[str, ...], set[int]] = {}
    dropped: list[int] = []
    for names in groups:
        kept = keep[names] = set()
        for n, (k, i) in enumerate(zip(keys[names], at[names], strict=True)):
            if k not in crossed or newest[k][2:] == (names, n):
                kept.add(n)
            else:
                dropped.append(i)
    out: Rows = {}
    out_where: dict[tuple[str, ...], Sequence[int]] = {}
    for names, rows in groups.items():
        kept = keep[names]
        if not kept:
            continue
        out[names] = [row for n, row in enumerate(rows) if n in kept]
        if where:
            out_where[names] = [i for n, i in enumerate(where[names]) if n in kept]
    return out, out_where if where else where, sorted(dropped)


def _wins(v: Any, i: int, old_v: Any, old_i: int, versioned: bool) -> bool:
    """Whether the record at batch index ``i`` (version ``v``) is newer than the one at
    ``old_i``: the greater version, a tie going to the later one."""
    if not versioned:
        return i > old_i
    if i > old_i:
        return newer_or_equal(v, old_v)
    return not newer_or_equal(old_v, v)
