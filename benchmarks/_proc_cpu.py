"""CPU accounting from ``/proc`` (Linux), for benchmarks whose processes share the machine.

:func:`snapshot` reads, at one moment, the CPU seconds (user + system) each of a set of
processes has used so far, and the machine's CPU time by kind from ``/proc/stat``; the
difference of two snapshots (:func:`cpu_between`) says who used the CPU over the interval
and how idle the machine was. A process gone by the second snapshot counts nothing (its CPU
since the first is unknown); one that appeared in between counts from zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Interval", "Snapshot", "children", "cpu_between", "cpu_seconds", "snapshot"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used, or None if it is gone (or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14, 15


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (PostgreSQL's backends and auxiliary processes)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    text = f.read()
            except OSError:
                continue
            if int(text[text.rindex(b")") + 2 :].split()[1]) == pid:
                out.append(int(name))
    return out


def _machine() -> tuple[float, float]:
    """(all CPU seconds, idle CPU seconds) of every core since boot, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    total = sum(cpu[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total / _TICK, (cpu[3] + cpu[4]) / _TICK


@dataclass(frozen=True)
class Snapshot:
    at: float
    """``time.monotonic()`` when read."""
    groups: dict[str, dict[int, float]]
    """CPU seconds so far of each process, by group name and pid."""
    total: float
    idle: float


def snapshot(at: float, groups: dict[str, list[int]]) -> Snapshot:
    read: dict[str, dict[int, float]] = {}
    for name, pids in groups.items():
        read[name] = {pid: s for pid in pids if (s := cpu_seconds(pid)) is not None}
    total, idle = _machine()
    return Snapshot(at, read, total, idle)


@dataclass(frozen=True)
class Interval:
    seconds: float
    cpu: dict[str, float]
    """CPU seconds each group used over the interval."""
    idle: float
    """Share of the machine's CPU time (every core) that was idle, 0..1."""
    busy_cores: float
    """Cores' worth of CPU used by anything on the machine, on average."""


def cpu_between(a: Snapshot, b: Snapshot) -> Interval:
    cpu = {}
    for name, after in b.groups.items():
        before = a.groups.get(name, {})
        cpu[name] = sum(s - before.get(pid, 0.0) for pid, s in after.items())
    total = b.total - a.total
    idle = (b.idle - a.idle) / total if total > 0 else 1.0
    seconds = b.at - a.at
    cores = (total - (b.idle - a.idle)) / seconds if seconds > 0 else 0.0
    return Interval(seconds, cpu, idle, cores)
