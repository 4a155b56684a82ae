"""Run every benchmark in one process, print the tables, and rewrite docs/benchmarks.md.

Usage: ``python -m benchmarks.run [--quick] [--write] [--only NAME,...] [--json PATH]``
(``make bench ARGS="..."``). A full run takes a few minutes and writes the doc; ``--quick``
is a smoke run (smaller sizes, under 30 s) that writes nothing unless ``--write`` is given.
A wrong result (rows missing from the table, records lost) raises and exits non-zero; a
missed target is reported, and fails the run only under ``--strict``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import (
    capacity,
    coalescing,
    hot_path,
    memory,
    observability,
    options_cost,
    postgres_copy,
    postgres_e2e,
    record_memory,
    spool,
    spool_kill,
    sqlite_e2e,
    stale_report,
    streams,
    threads,
)
from ._common import BenchmarkError, Section
from ._report import ROOT, kept_block, markdown, text

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS: dict[str, Callable[[bool], Section]] = {
    "hot_path": hot_path.measure,
    "sqlite_e2e": sqlite_e2e.measure,
    "coalescing": coalescing.measure,
    "memory": memory.measure,
    "record_memory": record_memory.measure,
    "options_cost": options_cost.measure,
    "threads": threads.measure,
    "postgres_e2e": postgres_e2e.measure,
    "postgres_copy": postgres_copy.measure,
    "observability": observability.measure,
    "capacity": capacity.measure,
    "spool": spool.measure,
    "spool_kill": spool_kill.measure,
    "streams": streams.measure,
    "stale_report": stale_report.measure,
}
DOC = ROOT / "docs" / "benchmarks.md"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 30 s)")
    p.add_argument(
        "--write",
        action="store_true",
        help="write the doc even after --quick or --only (a full run always writes it)",
    )
    p.add_argument(
        "--only",
        default="",
        help=f"comma-separated benchmarks to run, of: {', '.join(BENCHMARKS)}",
    )
    p.add_argument("--doc", type=Path, default=DOC, help=f"where to write (default {DOC})")
    p.add_argument("--json", type=Path, help="also write the raw figures to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 1 if any target was missed")
    return p.parse_args(argv)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    complete = names == list(BENCHMARKS)
    when = dt.datetime.now(dt.UTC)
    load_start = _load()
    started = time.perf_counter()
    sections: list[Section] = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            section = BENCHMARKS[name](args.quick)
        except BenchmarkError as exc:
            print(f"\nFAILED: {name} produced a wrong result: {exc}", file=sys.stderr)
            return 1
        section.seconds = time.perf_counter() - t0
        sections.append(section)
        print(text(section), end="\n\n", flush=True)
        gc.collect()
    seconds = time.perf_counter() - started
    missed = [(s.title, t) for s in sections for t in s.targets if not t.met]
    print(f"{len(names)} benchmark(s) in {seconds:.0f} s; {len(missed)} target(s) missed")
    for title, t in missed:
        print(f"  MISSED [{title}] {t.claim}: {t.figure}")

    command = "python -m benchmarks.run" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.write or (complete and not args.quick):
        doc = markdown(
            sections,
            when=when,
            seconds=seconds,
            quick=args.quick,
            command=command,
            load=f"{load_start} / {_load()} (the benchmarks keep about one core busy)",
            kept=kept_block(args.doc.read_text()) if args.doc.exists() else "",
        )
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(doc)
        print(f"wrote {args.doc}")
    else:
        print(f"{args.doc} left as it was (a --quick or --only run; --write writes it)")
    if args.json is not None:
        raw = {
            "date": when.isoformat(),
            "quick": args.quick,
            "seconds": seconds,
            "sections": {s.key: s.data for s in sections},
        }
        args.json.write_text(json.dumps(raw, indent=2, default=str))
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
