"""The spool against a plain-dict model (Hypothesis stateful): appends, done marks, clean
reopens and power losses in any order; what comes back is always what the model says."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from writebehind.spool import SpoolLog
from writebehind.spool.testing import PowerLossFileSystem

from .spool_helpers import spool_at

values = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.integers() | st.text(max_size=40) | st.lists(st.integers(), max_size=3),
    max_size=3,
)


class SpoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.durable: dict[int, Any] = {}  # reported durable, not done
        self.pending: dict[int, Any] = {}  # appended, not (yet) known durable
        self.done: dict[int, Any] = {}  # marked done: may come back after a crash
        self.log: SpoolLog | None = None
        self.fs: PowerLossFileSystem | None = None
        self._open()

    def _open(self) -> None:
        self.fs = PowerLossFileSystem(str(self.root / "spool"))
        self.log = SpoolLog.open(spool_at(self.root), fs=self.fs)

    @rule(records=st.lists(values, min_size=1, max_size=5), wait=st.booleans())
    def append(self, records: list[Any], wait: bool) -> None:
        assert self.log is not None
        seqs = self.log.append_many(records)
        self.pending.update(zip(seqs, records, strict=True))
        if wait:
            assert self.log.wait_durable(seqs[-1], timeout=10)
            self._settle()

    @precondition(lambda self: self.durable or self.pending)
    @rule(data=st.data())
    def mark_done(self, data: st.DataObject) -> None:
        assert self.log is not None
        pool = sorted({**self.durable, **self.pending})
        # indices, not st.sampled_from(pool): what a crash left in the pool depends on the
        # writer thread's timing, and Hypothesis requires the same draws on a replay
        picks = data.draw(st.lists(st.integers(0, 2**16), max_size=5))
        chosen = sorted({pool[i % len(pool)] for i in picks})
        self.log.done(chosen)
        for s in chosen:
            rec = self.durable.pop(s, None) if s in self.durable else self.pending.pop(s)
            self.done[s] = rec

    @rule()
    def reopen(self) -> None:
        assert self.log is not None
        assert self.log.close() == 0
        self._settle()
        self._open()
        self._check(exact=True)

    @rule(seed=st.integers(0, 2**32), mode=st.sampled_from(["random", "drop", "garble"]))
    def power_loss(self, seed: int, mode: Any) -> None:
        assert self.log is not None
        assert self.fs is not None
        self._settle()
        self.fs.crash(seed, mode=mode)
        self.log.close()
        self._open()
        self._check(exact=False)

    def _settle(self) -> None:
        """Move what the log reports durable from pending to durable."""
        assert self.log is not None
        top = self.log.durable_seq
        for s in [s for s in self.pending if s <= top]:
            self.durable[s] = self.pending.pop(s)

    def _check(self, *, exact: bool) -> None:
        assert self.log is not None
        got = dict(self.log.recovered())
        for s, rec in self.durable.items():
            assert got.get(s, "missing") == rec, f"durable seq {s} lost or changed"
        extra = set(got) - set(self.durable)
        allowed = set(self.pending) | set(self.done)
        assert extra <= allowed, f"never appended: {sorted(extra - allowed)}"
        for s in extra:
            assert got[s] == {**self.pending, **self.done}[s]
        if exact:  # a clean close synced every record and every done mark
            assert set(got) == set(self.durable)
        # what came back is the new truth; done records that came back must be done again
        self.durable = {s: got[s] for s in got}
        self.pending.clear()
        self.done = {s: r for s, r in self.done.items() if s not in got}

    def teardown(self) -> None:
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


SpoolModel.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
test_spool_matches_the_model = SpoolModel.TestCase
