"""The spool directory: created private, checked, and locked to one owner.

- Created 0700 if missing. An existing directory must belong to this user and must not be
  writable by group or others (anyone who can write there can plant frames that the next
  batcher would deliver): ``ConfigError`` otherwise, with the fix.
- ``lock`` (0600) is held with ``fcntl.flock`` for the log's lifetime and holds the owner's
  pid. A second opener, in another process or in this one, gets ``ConfigError`` naming it.
  flock locks belong to the open file, so a crashed owner's lock is gone with its process.
- After ``os.fork()`` the child closes its copy of the lock (and of the log's files): the
  lock stays the parent's, and it is released when the parent closes or dies even while the
  child lives on. The log itself refuses use in the child (``SpoolForked``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import weakref
from collections.abc import Callable
from typing import Protocol

from .._errors import ConfigError
from ._files import FileHandle, FileSystem
from ._segments import DONE_SUFFIX, SEG_SUFFIX, TMP_SUFFIX

__all__ = ["LOCK", "check_dir", "lock_dir", "on_fork_in_child"]

LOCK = "lock"


class _Forkable(Protocol):
    """Something that has to let go of inherited files in a forked child."""

    def forked(self) -> None: ...


_in_child: weakref.WeakSet[_Forkable] = weakref.WeakSet()


def on_fork_in_child(owner: _Forkable) -> Callable[[], None]:
    """Call ``owner.forked()`` in every child forked from now on; returns the undo."""
    _in_child.add(owner)
    return lambda: _in_child.discard(owner)


def _after_fork() -> None:
    for owner in list(_in_child):
        with contextlib.suppress(Exception):  # closing inherited fds must not break a fork
            owner.forked()
    _in_child.clear()


os.register_at_fork(after_in_child=_after_fork)


def check_dir(fs: FileSystem, path: str) -> None:
    """Create ``path`` (0700) if missing; ``ConfigError`` if it is not a private directory."""
    try:
        fs.mkdir(path)
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(
            f"path: cannot create or open the spool directory {path!r}: {exc}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"path: {path!r} is not a directory; give the spool a directory")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"path: the spool directory {path!r} belongs to uid {st.st_uid}, not to this "
            f"process (uid {os.geteuid()}); use a directory of your own"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"path: the spool directory {path!r} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); anyone who can write there could plant records. "
            f"Run 'chmod 700 {path}' or use a private directory"
        )
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise ConfigError(f"path: cannot list the spool directory {path!r}: {exc}") from None
    for name in names:  # what the spool opens as files must be files (not a directory)
        if name == LOCK or name.endswith((SEG_SUFFIX, DONE_SUFFIX, TMP_SUFFIX)):
            with contextlib.suppress(OSError):  # gone meanwhile: nothing to open
                if not stat.S_ISREG(os.lstat(os.path.join(path, name)).st_mode):
                    raise ConfigError(
                        f"path: the spool directory {path!r} holds {name!r}, which is not a "
                        f"regular file but is named like one of the spool's files; move it "
                        f"out of the directory"
                    )


def lock_dir(fs: FileSystem, path: str) -> FileHandle:
    """Take the directory's lock for this process and record the pid in it.

    ``ConfigError`` naming the holder when another process, or another log in this process,
    holds it."""
    lock_path = os.path.join(path, LOCK)
    handle = fs.open_lock(lock_path)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"path: cannot lock the spool {path!r}: {exc}") from None
        raise ConfigError(_in_use(fs, path, lock_path)) from None
    try:
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid is informative only; the flock is the lock
    return handle


def _in_use(fs: FileSystem, path: str, lock_path: str) -> str:
    try:
        pid = int(fs.read(lock_path).split()[0])
    except (OSError, ValueError, IndexError):
        pid = None
    if pid == os.getpid():
        who = f"another SpoolLog in this process (pid {pid})"
    elif pid is not None:
        who = f"pid {pid}"
    else:
        who = "another process"
    return (
        f"path: the spool {path!r} is in use by {who}; one batcher at a time may own a "
        f"spool: close the other one, or give this batcher its own directory"
    )
