"""Plant each bug of issue 18 in a copy of ``src/`` and check that the named tests catch it.

    .venv/bin/python -m tests.tools.mutation            # every mutation
    .venv/bin/python -m tests.tools.mutation --list     # what it would plant
    .venv/bin/python -m tests.tools.mutation --only pg-40 --only close-deadline

For each mutation: ``src/`` is copied to a temporary directory, the original snippet is
replaced there (never in the repository), and the mutation's tests run with that copy first
on ``sys.path`` (``PYTHONPATH``); the process running them first checks that
``writebehind.__file__`` is inside the copy (the package is installed editable, so a wrong
path would silently test the unmutated code) and aborts otherwise. A mutation is *caught*
when pytest reports failed tests (exit status 1); any other status (no tests collected, a
usage error, the guard) is an error, not a catch.

Before the mutations, the same tests run on an unmutated copy and must pass. The script
exits non-zero if a snippet is not found exactly once in its file (so the list cannot rot
silently when the code changes), if the unmutated tests fail, or if any mutation survives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str  # the planted bug, as issue 18 words it
    file: str  # relative to src/
    original: str
    mutated: str
    tests: tuple[str, ...]


T = "tests/"
CLOSE = T + "test_gap_close_deadline.py::"
RETRY = T + "test_gap_retry.py::"
PGV = T + "test_gap_pg_versions.py::"
PGS = T + "test_gap_pg_sqlstate.py::"
_CLASSES = ("08", "40", "53", "55", "57", "58")


def _classes(without: str = "") -> str:
    names = ", ".join(f'"{c}"' for c in _CLASSES if c != without)
    return f"RETRIABLE_CLASSES = frozenset({{{names}}})"


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "close-deadline",
        "close() waits twice its deadline",
        "writebehind/_engine.py",
        "drained = await self._flusher.drain(timeout)",
        "drained = await self._flusher.drain(2 * timeout)",
        (CLOSE + "test_close_returns_within_its_deadline_plus_the_stated_grace",),
    ),
    Mutation(
        "superseded-early",
        "a superseded record reports COALESCED whatever (and whenever) its successor's fate",
        "writebehind/_receipt.py",
        "if final is None:\n            return None\n        return Outcome.COALESCED if final",
        "return Outcome.COALESCED\n        return Outcome.COALESCED if final",
        (T + "test_gap_superseded.py",),
    ),
    Mutation(
        "superseded-always-coalesced",
        "a superseded record says COALESCED even when its successor was dead-lettered, "
        "dropped or lost (DESIGN section 6: it takes the successor's outcome)",
        "writebehind/_receipt.py",
        "return Outcome.COALESCED if final is Outcome.COMMITTED else final",
        "return Outcome.COALESCED",
        (T + "test_gap_superseded.py",),
    ),
    Mutation(
        "retry-deadline",
        "RetryPolicy.deadline ignored",
        "writebehind/_retry.py",
        "and (policy.deadline is None or spent.elapsed + wait < policy.deadline)",
        "and True",
        (RETRY + "test_retry_deadline_bounds_the_time_spent_on_one_batch",),
    ),
    Mutation(
        "latency-target",
        "latency_target not passed to the engine",
        "writebehind/_engine.py",
        "AdaptiveConcurrency(opts.max_in_flight, opts.latency_target)",
        "AdaptiveConcurrency(opts.max_in_flight, None)",
        (RETRY + "test_latency_target_halves_the_concurrency",),
    ),
    Mutation(
        "max-in-flight",
        "max_in_flight not honoured (one write at a time)",
        "writebehind/_engine.py",
        "AdaptiveConcurrency(opts.max_in_flight, opts.latency_target)",
        "AdaptiveConcurrency(1, opts.latency_target)",
        (
            PGV + "test_max_in_flight_overlaps_and_the_older_batch_lands_last",
            RETRY + "test_latency_target_halves_the_concurrency",
        ),
    ),
    *(
        Mutation(
            f"pg-{cls}",
            f"PostgreSQL SQLSTATE class {cls} treated as permanent",
            "writebehind/sinks/_pg.py",
            _classes(),
            _classes(without=cls),
            tests,
        )
        for cls, tests in (
            (
                "40",
                (
                    PGS + "test_serialization_failure_40001_is_retried",
                    PGS + "test_deadlock_40P01_is_retried",
                ),
            ),
            ("53", (PGS + "test_too_many_connections_53300_is_retried",)),
            ("55", (PGS + "test_lock_not_available_55P03_is_retried",)),
        )
    ),
    Mutation(
        "dlq-attempts",
        "dead-letter entries written with attempts=1 whatever the attempts",
        "writebehind/_delivery.py",
        "attempts=attempts,\n",
        "attempts=1,\n",
        (
            RETRY + "test_stored_entries_carry_the_exact_attempts",
            RETRY + "test_retry_deadline_bounds_the_time_spent_on_one_batch",
        ),
    ),
    Mutation(
        "float-exponent",
        "the codec drops the exponent case: 1e300 comes back from PostgresDeadLetter as an int",
        "writebehind/dlq/_codec.py",
        'if not math.isfinite(value) or "e" in text or',
        "if not math.isfinite(value) or",
        (RETRY + "test_floats_with_an_exponent_round_trip_through_the_store",),
    ),
    Mutation(
        "pg-version-condition",
        "no version condition in the PostgreSQL upsert",
        "writebehind/sinks/postgres.py",
        'return sql + on_conflict(names, self.key, self.version, "t")',
        'return sql + on_conflict(names, self.key, None, "t")',
        (
            PGV + "test_two_writers_the_older_version_landing_last_loses",
            PGV + "test_max_in_flight_overlaps_and_the_older_batch_lands_last",
            T + "test_postgres.py::test_two_processes_write_the_same_keys",
        ),
    ),
)

# Guards added with issue 18's remaining weak assertions (a test of each named below).
LAG = T + "test_events_lag.py::"
MUTATIONS += (
    Mutation(
        "events-lag-skipped",
        "a reader of AsyncBatcher.events() that fell behind silently skips to the oldest "
        "event held instead of getting SubscriberLagged",
        "writebehind/_events.py",
        "            events = self._intake.take(self._next)",
        "            events = self._intake.take(max(self._next, self._intake.first))",
        (LAG + "test_a_stopped_async_reader_lags_and_the_writers_do_not_wait",),
    ),
    Mutation(
        "sync-events-lag-hidden",
        "Batcher.events() ends quietly when its reader lagged, instead of raising SubscriberLagged",
        "writebehind/_sync.py",
        "chunk = fut.result()",
        "chunk = fut.result() if fut.exception() is None else []",
        (LAG + "test_a_stopped_sync_reader_lags_and_the_writers_do_not_wait",),
    ),
    Mutation(
        "committed-write-replayed",
        "every 10th write that committed is taken for a retriable failure and written again "
        "(duplicates in a table without a key; an upsert hides them)",
        "writebehind/_delivery.py",
        "        return None\n\n    # -- instruments",
        '        globals()["_N"] = globals().get("_N", 0) + 1\n'
        '        return RetriableSinkError("replayed") if globals()["_N"] % 10 == 0 else None\n'
        "\n    # -- instruments",
        (T + "test_postgres.py::test_terminated_backends_lose_and_duplicate_nothing",),
    ),
    Mutation(
        "upsert-do-nothing",
        "a key already in the table is never updated (ON CONFLICT DO NOTHING)",
        "writebehind/sinks/_upsert.py",
        'clause = f" ON CONFLICT ({conflict}) DO UPDATE SET {sets}"',
        'return f" ON CONFLICT ({conflict}) DO NOTHING"',
        (T + "test_sqlite.py::test_key_needs_a_unique_index",),
    ),
)

GUARD = """
import os, sys
import writebehind
where = os.path.realpath(writebehind.__file__)
want = os.path.realpath(os.environ["WB_MUTATION_SRC"]) + os.sep
if not where.startswith(want):
    print(f"mutation guard: writebehind imported from {where}, not from {want}", flush=True)
    sys.exit(97)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""
_GUARD_FAILED = 97


def check_snippets(mutations: tuple[Mutation, ...]) -> list[str]:
    """Each original snippet occurs exactly once in its file under the real src/."""
    problems = []
    for m in mutations:
        path = SRC / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        n = path.read_text().count(m.original)
        if n != 1:
            problems.append(f"{m.name}: the original snippet occurs {n} times in {m.file}")
    return problems


def run_tests(src: Path, tests: tuple[str, ...], timeout: float, verbose: bool) -> int:
    """Run ``tests`` with ``src`` first on sys.path; pytest's exit status."""
    env = dict(os.environ, PYTHONPATH=f"{src}", WB_MUTATION_SRC=str(src / "writebehind"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    args = [sys.executable, "-c", GUARD, "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(
            args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        print(f"    timed out after {timeout:.0f} s")
        return -1
    if verbose or done.returncode not in (0, 1):
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    if done.returncode == _GUARD_FAILED:
        raise SystemExit(f"aborted: {done.stdout.strip()}")
    return done.returncode


def copy_src(into: Path) -> Path:
    dest = into / "src"
    shutil.copytree(SRC, dest, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run this mutation only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per test run")
    parser.add_argument("--verbose", action="store_true", help="show pytest's output")
    opts = parser.parse_args(argv)
    chosen = tuple(m for m in MUTATIONS if not opts.only or m.name in opts.only)
    unknown = set(opts.only) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"no such mutation: {', '.join(sorted(unknown))}")
    if opts.list:
        for m in chosen:
            print(f"{m.name}: {m.bug}\n    {m.file}: {m.original!r} -> {m.mutated!r}")
            for t in m.tests:
                print(f"    {t}")
        return 0
    problems = check_snippets(MUTATIONS)
    if problems:
        print("snippets not found (update tests/tools/mutation.py):", *problems, sep="\n  ")
        return 2
    all_tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="wb-mutation-") as tmp:
        began = time.monotonic()
        status = run_tests(copy_src(Path(tmp) / "clean"), all_tests, opts.timeout, opts.verbose)
        print(f"unmutated: {'pass' if status == 0 else f'FAIL (pytest {status})'} "
              f"({len(all_tests)} test ids, {time.monotonic() - began:.0f} s)")  # fmt: skip
        if status != 0:
            return 1
        survived = []
        for m in chosen:
            src = copy_src(Path(tmp) / m.name)
            target = src / m.file
            text = target.read_text()
            target.write_text(text.replace(m.original, m.mutated, 1))
            assert (SRC / m.file).read_text() == text  # the repository is untouched
            began = time.monotonic()
            status = run_tests(src, m.tests, opts.timeout, opts.verbose)
            verdict = "caught" if status == 1 else "NOT caught"
            if status not in (0, 1):
                verdict += f" (pytest exit status {status}: an error, not a failing test)"
            print(f"{m.name}: {verdict} ({time.monotonic() - began:.0f} s) - {m.bug}")
            if status != 1:
                survived.append(m.name)
    if survived:
        print(f"{len(survived)} of {len(chosen)} mutation(s) survived: {', '.join(survived)}")
        return 1
    print(f"all {len(chosen)} mutation(s) caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
