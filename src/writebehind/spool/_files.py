"""The file-system calls the spool makes, in one small interface, so that tests can put a
fault-injecting or power-loss-simulating layer underneath (``writebehind.spool.testing``).

Every file is created 0600 and every directory 0700 (``os.open``/``mkdir`` modes only ever
lose bits to the umask, so a permissive umask cannot widen them). Paths are plain ``str``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

__all__ = ["FileHandle", "FileSystem", "OsFileSystem", "write_all"]

_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class FileHandle(Protocol):
    """An open file: appended to, synced, truncated, closed."""

    def write(self, data: bytes) -> int:
        """Append ``data``; the number of bytes written (a short write is possible)."""
        ...

    def fsync(self) -> None: ...

    def truncate(self, size: int) -> None: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    """The operations the spool needs; :class:`OsFileSystem` is the real one."""

    def open(self, path: str, *, new: bool) -> FileHandle:
        """Open ``path`` for appending (0600), creating it; ``new``: it must not exist."""
        ...

    def open_lock(self, path: str) -> FileHandle:
        """Open (create) the lock file ``path`` for reading and writing, at offset 0."""
        ...

    def read(self, path: str) -> bytes: ...

    def rename(self, src: str, dst: str) -> None: ...

    def unlink(self, path: str) -> None: ...

    def fsync_dir(self, path: str) -> None: ...

    def listdir(self, path: str) -> list[str]: ...

    def mkdir(self, path: str) -> None:
        """Create the directory ``path`` (0700) and any missing parents (these as the umask
        says); an existing one is left as it is."""
        ...


class _OsFile:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> int:
        return os.write(self._fd, data)

    def fsync(self) -> None:
        os.fsync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class OsFileSystem:
    """The real file system."""

    def open(self, path: str, *, new: bool) -> FileHandle:
        return _OsFile(os.open(path, _APPEND | (os.O_EXCL if new else 0), 0o600))

    def open_lock(self, path: str) -> FileHandle:
        return _OsFile(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def mkdir(self, path: str) -> None:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)  # like mkdir -p: parents take the umask
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)


def write_all(handle: FileHandle, data: bytes) -> None:
    """Write all of ``data`` (retrying short writes); raises what the write raised."""
    while data:
        n = handle.write(data)
        if n <= 0:
            raise OSError("write returned 0 bytes")
        data = data[n:]
