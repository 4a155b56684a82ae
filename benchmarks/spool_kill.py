"""kill -9 in spool mode, 200 times: the CI test (tests/test_spool_kill_pg.py, 50 kills) run
at four times the count.

A child process adds unique ids into PostgreSQL through a spool-mode batcher at full speed,
printing each id once its ``add()`` returned; it is SIGKILLed at a random moment (and at named
points: a torn write, mid-fsync, mid-rotation, mid-trim); the next batcher on the spool
delivers what it left. Every printed id must be in the table: one missing fails the run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from ._common import BenchmarkError, Section, Table, Target, fmt_int
from ._report import ROOT

__all__ = ["measure"]

_SUMMARY = re.compile(
    r"kill -9 x (\d+) \((\d+) at a named point\): (\d+) acknowledged ids, 0 missing; "
    r"(\d+) records recovered"
)


def measure(quick: bool = False) -> Section:
    runs = 20 if quick else 200
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_spool_kill_pg.py", "-q", "-s",
         "-p", "no:cacheprovider"],
        cwd=ROOT, env={**os.environ, "WRITEBEHIND_KILL_RUNS": str(runs)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    found = _SUMMARY.search(proc.stdout)
    if proc.returncode != 0 or found is None:
        raise BenchmarkError(
            f"kill -9 x {runs}: the test failed (exit {proc.returncode}):\n"
            + proc.stdout[-3000:]
            + proc.stderr[-2000:]
        )
    killed, named, acked, recovered = (int(x) for x in found.groups())
    return Section(
        key="spool_kill",
        title="kill -9 in spool mode",
        method=(
            f"`tests/test_spool_kill_pg.py` with `WRITEBEHIND_KILL_RUNS={runs}`: a child adds "
            "unique ids into PostgreSQL through a spool-mode batcher, printing each once its "
            "`add()` returned, and is SIGKILLed at a random moment or at a named point (a torn "
            "write, mid-fsync, mid-rotation, mid-trim); the next batcher on the spool delivers "
            "what it left; every printed id must be in the table."
        ),
        tables=[
            Table(
                "kill -9 runs",
                [
                    "kills",
                    "at a named point",
                    "acknowledged ids",
                    "missing",
                    "recovered from the spool",
                    "seconds",
                ],
                [
                    [
                        str(killed),
                        str(named),
                        fmt_int(acked),
                        "0",
                        fmt_int(recovered),
                        f"{seconds:.0f}",
                    ]
                ],
            )
        ],
        targets=[
            Target(
                f"0 acknowledged ids missing over {runs} kill -9 runs",
                True,
                f"{fmt_int(acked)} acknowledged, 0 missing ({named} kills at named points)",
            )
        ],
        data={"kills": killed, "named": named, "acked": acked, "recovered": recovered},
    )
