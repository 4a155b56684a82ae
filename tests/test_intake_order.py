"""The intake keeps its pending keys oldest first beside the dict (``Intake._order``), so a
cut takes the oldest records in time proportional to the batch whatever the backlog. The
two must never disagree: a property test over puts, coalescing, drops and cuts."""

from __future__ import annotations

import asyncio

import hypothesis.strategies as st
from hypothesis import given, settings

import writebehind as wb
from writebehind._config import Options
from writebehind._intake import Intake

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 12), st.integers(0, 3)),
        st.tuples(st.just("cut"), st.integers(1, 6), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.sampled_from(["drop_oldest", "drop_newest", "raise"]))
def test_the_order_is_the_dicts_and_cuts_take_the_oldest(steps: list, when_full: str) -> None:  # type: ignore[type-arg]
    intake = Intake(Options(key="id", version="v", max_pending=5, max_batch=3,
                            when_full=when_full))  # fmt: skip
    loop = asyncio.new_event_loop()
    try:
        intake.bind(loop, lambda: None, lambda batch: None)
        model: dict[int, int] = {}  # key -> version, oldest key first (a dict's order)
        for op, a, b in steps:
            if op == "put":
                full = a not in model and len(model) >= 5
                try:
                    intake.put_nowait({"id": a, "v": b})
                except wb.BufferFull:
                    assert when_full == "raise"
                    assert full
                    continue
                if a in model:
                    model[a] = max(model[a], b)  # the newer (or equal) version stays put
                elif not full:
                    model[a] = b
                elif when_full == "drop_oldest":
                    del model[next(iter(model))]
                    model[a] = b
            else:
                taken, _ = intake.cut(a)
                want = list(model)[:a]
                assert [r.record["id"] for r in taken] == want
                for key in want:
                    assert taken[want.index(key)].version == model.pop(key)
                intake.settle(taken, wb.Outcome.COMMITTED)
            assert list(intake._order) == list(intake._pending) == list(model)
    finally:
        loop.close()
