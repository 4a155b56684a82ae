"""writebehind's benchmarks: the measured claims behind docs/benchmarks.md.

Run them all with ``make bench`` (``python -m benchmarks.run``); ``--quick`` is a smoke run.
Each module exposes ``measure(quick: bool) -> Section``; :mod:`benchmarks.run` composes them,
prints the tables and rewrites ``docs/benchmarks.md``.
"""
