"""File systems that fail on purpose, for the spool's tests and yours.

- :class:`FaultyFileSystem`: the real file system, with ``ENOSPC``/``EIO``/... injected on the
  Nth call of an operation (``fail("fsync", errno.EIO, after=2)``) until ``clear()``.
- :class:`PowerLossFileSystem` (alias ``PowerLossFS``): that, plus a model of what is on the
  platter. A file's bytes count as on disk once it was fsynced; a directory entry (a created,
  renamed or unlinked name) once its directory was fsynced. ``crash_at_fsync=N`` makes the Nth
  sync (file or directory) raise :class:`SimulatedCrash` instead of syncing (syncs are
  only modelled, not made, unless ``real_sync=True``); :meth:`crash` then
  rewrites the directory as a power loss at that moment could have left it: every write not
  yet synced dropped, cut short, zeroed or garbled, and every unsynced name change kept or
  undone, each chosen by a seeded random generator (or all dropped: ``mode="drop"``). Every
  later call raises ``SimulatedCrash`` (the process is dead) and its files, lock included,
  are closed, so a new log can open the directory as the next boot would.

``SimulatedCrash`` derives from ``BaseException`` so that no ``except Exception`` (or
``except OSError``) in the code under test can swallow it.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
import random
import threading
from typing import Literal

from ._files import FileHandle, FileSystem, OsFileSystem

__all__ = ["FaultyFileSystem", "PowerLossFS", "PowerLossFileSystem", "SimulatedCrash"]

Op = Literal["open", "write", "fsync", "fsync_dir", "rename", "unlink", "truncate", "read"]
CrashMode = Literal["random", "drop", "garble"]


class SimulatedCrash(BaseException):
    """The simulated machine lost power (or the process died) here."""


class _Fault:
    __slots__ = ("code", "countdown", "times")

    def __init__(self, code: int, countdown: int, times: int | None) -> None:
        self.code, self.countdown, self.times = code, countdown, times


class _Inode:
    __slots__ = ("data", "synced")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.synced = bytes(data)


class _Handle:
    """A handle that goes through its file system's checks and model."""

    __slots__ = ("_base", "_fs", "inode")

    def __init__(self, fs: FaultyFileSystem, base: FileHandle, inode: _Inode | None) -> None:
        self._fs, self._base, self.inode = fs, base, inode

    def write(self, data: bytes) -> int:
        return self._fs._write(self, self._base, data)

    def fsync(self) -> None:
        self._fs._fsync(self, self._base)

    def truncate(self, size: int) -> None:
        self._fs._truncate(self, self._base, size)

    def fileno(self) -> int:
        return self._base.fileno()

    def close(self) -> None:
        self._fs._close(self._base)


class FaultyFileSystem:
    """The real file system (or ``base``) with errors injected on demand. Thread-safe."""

    def __init__(self, base: FileSystem | None = None) -> None:
        self._base: FileSystem = base if base is not None else OsFileSystem()
        self._lock = threading.RLock()
        self._faults: dict[str, _Fault] = {}
        self.calls: dict[str, int] = {}
        self.failures = 0

    def fail(
        self, op: Op, code: int = errnos.EIO, *, after: int = 0, times: int | None = None
    ) -> None:
        """Make calls of ``op`` fail with ``OSError(code)``: the first ``after`` calls from
        now succeed, then ``times`` calls fail (None: every call until :meth:`clear`). A
        failing ``write`` first writes half of its data (a short write, as a full disk
        does)."""
        with self._lock:
            self._faults[op] = _Fault(code, after, times)

    def clear(self, op: Op | None = None) -> None:
        """Stop failing ``op`` (every operation when None): the fault is gone."""
        with self._lock:
            if op is None:
                self._faults.clear()
            else:
                self._faults.pop(op, None)

    def _check(self, op: str) -> None:
        """Count a call of ``op``; raise the injected error if it is due."""
        self.calls[op] = self.calls.get(op, 0) + 1
        fault = self._faults.get(op)
        if fault is None:
            return
        if fault.countdown > 0:
            fault.countdown -= 1
            return
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[op]
        self.failures += 1
        raise OSError(fault.code, f"{os.strerror(fault.code)} (injected on {op})")

    # -- FileSystem ---------------------------------------------------------------------

    def open(self, path: str, *, new: bool) -> FileHandle:
        with self._lock:
            self._check("open")
            return _Handle(self, self._base.open(path, new=new), self._opened(path, new))

    def open_lock(self, path: str) -> FileHandle:
        with self._lock:
            self._alive()
            return _Handle(self, self._base.open_lock(path), None)

    def read(self, path: str) -> bytes:
        with self._lock:
            self._check("read")
            return self._base.read(path)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._check("rename")
            self._base.rename(src, dst)
            self._renamed(src, dst)

    def unlink(self, path: str) -> None:
        with self._lock:
            self._check("unlink")
            self._base.unlink(path)
            self._unlinked(path)

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._sync_point()
            self._check("fsync_dir")
            if self._real_sync():
                self._base.fsync_dir(path)
            self._dir_synced(path)

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            self._alive()
            return self._base.listdir(path)

    def mkdir(self, path: str) -> None:
        with self._lock:
            self._alive()
            self._base.mkdir(path)

    # -- handles ------------------------------------------------------------------------

    def _write(self, handle: _Handle, base: FileHandle, data: bytes) -> int:
        with self._lock:
            try:
                self._check("write")
            except OSError:
                half = base.write(data[: len(data) // 2]) if len(data) > 1 else 0
                self._wrote(handle, data[:half])
                raise
            n = base.write(data)
            self._wrote(handle, data[:n])
            return n

    def _fsync(self, handle: _Handle, base: FileHandle) -> None:
        with self._lock:
            self._sync_point()
            self._check("fsync")
            if self._real_sync():
                base.fsync()
            if handle.inode is not None:
                handle.inode.synced = bytes(handle.inode.data)

    def _truncate(self, handle: _Handle, base: FileHandle, size: int) -> None:
        with self._lock:
            self._check("truncate")
            base.truncate(size)
            if handle.inode is not None:
                del handle.inode.data[size:]

    def _close(self, base: FileHandle) -> None:
        with self._lock:
            base.close()

    # -- hooks for the power-loss model (nothing to model here) --------------------------

    def _alive(self) -> None:
        pass

    def _real_sync(self) -> bool:
        return True

    def _sync_point(self) -> None:
        self._alive()

    def _opened(self, path: str, new: bool) -> _Inode | None:
        return None

    def _wrote(self, handle: _Handle, data: bytes) -> None:
        if handle.inode is not None:
            handle.inode.data += data

    def _renamed(self, src: str, dst: str) -> None:
        pass

    def _unlinked(self, path: str) -> None:
        pass

    def _dir_synced(self, path: str) -> None:
        pass


class PowerLossFileSystem(FaultyFileSystem):
    """A :class:`FaultyFileSystem` that also models what would survive a power loss under
    ``root`` (see the module docstring)."""

    def __init__(
        self,
        root: str,
        *,
        crash_at_fsync: int | None = None,
        real_sync: bool = False,
        base: FileSystem | None = None,
    ) -> None:
        super().__init__(base)
        self.root = os.path.abspath(root)
        self.real_sync = real_sync  # False: the model decides what survives; skip real syncs
        self.crash_at_fsync = crash_at_fsync
        self.syncs = 0
        self.crashed = False
        self._entries: dict[str, _Inode] = {}  # name -> file, now
        self._durable: dict[str, _Inode] = {}  # name -> file, as its directory was synced
        self._open: list[FileHandle] = []  # the real handles: closed when power is lost
        self._applied = False
        for path in self._files_on_disk():
            with open(path, "rb") as f:
                self._entries[path] = self._durable[path] = _Inode(f.read())

    def crash(self, seed: int | None = None, *, mode: CrashMode = "random") -> None:
        """Lose power now: close every file and rewrite ``root`` as it could be after the
        reboot. Idempotent in effect: only the first call rewrites."""
        with self._lock:
            first, self._applied = not self._applied, True
            self.crashed = True
            for handle in self._open:
                with contextlib.suppress(OSError):
                    handle.close()
            self._open.clear()
            if not first:
                return
            rng = random.Random(seed)
            state: dict[str, bytes] = {}
            for path in sorted(set(self._entries) | set(self._durable)):
                now, then = self._entries.get(path), self._durable.get(path)
                if now is then or mode == "garble":
                    inode = now if now is not None else then
                elif mode == "drop":
                    inode = then
                else:
                    inode = rng.choice([now, then])
                if inode is not None:
                    state[path] = _survivor(inode, rng, mode)
            for path in self._files_on_disk():
                os.unlink(path)
            for path, data in state.items():
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)

    def _files_on_disk(self) -> list[str]:
        out: list[str] = []
        for top, _dirs, files in os.walk(self.root):
            out.extend(os.path.join(top, f) for f in files if f != "lock" or top != self.root)
        return out

    def _tracked(self, path: str) -> bool:
        return os.path.abspath(path).startswith(self.root + os.sep)

    def _real_sync(self) -> bool:
        return self.real_sync

    def _alive(self) -> None:
        if self.crashed:
            raise SimulatedCrash("the simulated machine is down")

    def _check(self, op: str) -> None:
        self._alive()
        super()._check(op)

    def _sync_point(self) -> None:
        self._alive()
        self.syncs += 1
        if self.syncs == self.crash_at_fsync:
            self.crashed = True
            raise SimulatedCrash(f"power lost at sync {self.syncs}")

    def open_lock(self, path: str) -> FileHandle:
        handle = super().open_lock(path)
        assert isinstance(handle, _Handle)
        self._open.append(handle._base)
        return handle

    def open(self, path: str, *, new: bool) -> FileHandle:
        handle = super().open(path, new=new)
        assert isinstance(handle, _Handle)
        self._open.append(handle._base)
        return handle

    def _close(self, base: FileHandle) -> None:
        with self._lock:
            if not self.crashed:
                base.close()

    def _opened(self, path: str, new: bool) -> _Inode | None:
        path = os.path.abspath(path)
        if not self._tracked(path):
            return None
        inode = self._entries.get(path)
        if new or inode is None:
            inode = self._entries[path] = _Inode()
        return inode

    def _renamed(self, src: str, dst: str) -> None:
        inode = self._entries.pop(os.path.abspath(src), None)
        if inode is not None:
            self._entries[os.path.abspath(dst)] = inode

    def _unlinked(self, path: str) -> None:
        self._entries.pop(os.path.abspath(path), None)

    def _dir_synced(self, path: str) -> None:
        path = os.path.abspath(path)
        for name in set(self._entries) | set(self._durable):
            if os.path.dirname(name) == path:
                if name in self._entries:
                    self._durable[name] = self._entries[name]
                else:
                    self._durable.pop(name, None)


PowerLossFS = PowerLossFileSystem


def _survivor(inode: _Inode, rng: random.Random, mode: CrashMode) -> bytes:
    """What a power loss leaves of one file: its synced bytes, then what became of the rest."""
    data, synced = bytes(inode.data), inode.synced
    if not data.startswith(synced):  # truncated since its last sync: either version
        return synced if mode == "drop" else rng.choice([synced, data])
    tail = data[len(synced) :]
    if not tail or mode == "drop":
        return synced
    fate = rng.choice(
        ["garble", "zeros", "cut", "flip"] + (["drop", "keep"] if mode == "random" else [])
    )
    if fate == "drop":
        return synced
    if fate == "keep":
        return data
    if fate == "cut":
        return synced + tail[: rng.randrange(len(tail))]
    if fate == "zeros":
        return synced + bytes(rng.randrange(1, len(tail) + 1))
    if fate == "flip":
        flipped = bytearray(tail)
        for _ in range(rng.randint(1, 3)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return synced + bytes(flipped)
    return synced + rng.randbytes(rng.randrange(1, len(tail) + 1))
