"""The spool directory: private permissions whatever the umask, refused when others can
write it or it is not ours, locked against a second opener (another process, or another log
in this process), and unusable from a forked child."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import writebehind as wb
from writebehind.spool import SpoolForked, SpoolLog

from .spool_helpers import open_log, rec, spool_at


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_private_modes_under_a_permissive_umask(tmp_path: Path, permissive_umask: None) -> None:
    """Directory 0700, every file 0600 (segments, done files, the lock, damaged copies)."""
    with open_log(tmp_path) as log:
        seqs = log.append_many(rec(i) for i in range(100))
        log.wait_durable(seqs[-1], timeout=10)
        log.done(seqs[:3])
    seg = sorted((tmp_path / "spool").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[40] ^= 1
    seg.write_bytes(bytes(data))
    with open_log(tmp_path) as log:
        assert log.damage.frames == 1
    d = tmp_path / "spool"
    assert mode(d) == 0o700
    assert mode(d / "damaged") == 0o700
    files = [p for p in d.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".seg", ".done", ".bad", ""}
    assert {mode(p) for p in files} == {0o600}


@pytest.mark.parametrize("bits", [0o022, 0o002, 0o020])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, bits: int) -> None:
    """Group- or world-writable: ConfigError naming the path and the chmod that fixes it."""
    d = tmp_path / "spool"
    d.mkdir()
    d.chmod(0o700 | bits)
    with pytest.raises(wb.ConfigError, match=r"^path: .*writable by group or others.*chmod 700"):
        open_log(tmp_path)


def test_a_readable_existing_directory_is_accepted(tmp_path: Path) -> None:
    """0755 (others may read, not write) is the user's choice and is left as it is."""
    d = tmp_path / "spool"
    d.mkdir()
    d.chmod(0o755)
    open_log(tmp_path).close()
    assert mode(d) == 0o755


def test_a_directory_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not ours: ConfigError naming both uids."""
    (tmp_path / "spool").mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(tmp_path).st_uid + 4242)
    with pytest.raises(wb.ConfigError, match=r"^path: .*belongs to uid"):
        open_log(tmp_path)


def test_a_file_where_the_directory_should_be(tmp_path: Path) -> None:
    """A path that is a file is a ConfigError."""
    (tmp_path / "spool").write_text("x")
    with pytest.raises(wb.ConfigError, match=r"^path: "):
        open_log(tmp_path)


def test_second_log_in_this_process_is_refused(tmp_path: Path) -> None:
    """Same directory, same process: ConfigError saying so; after close() it opens."""
    log = open_log(tmp_path)
    with pytest.raises(
        wb.ConfigError, match=rf"in use by another SpoolLog in this process \(pid {os.getpid()}\)"
    ):
        open_log(tmp_path)
    log.close()
    open_log(tmp_path).close()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from writebehind.spool import Spool, SpoolLog
    log = SpoolLog.open(Spool(sys.argv[1], max_bytes=1 << 20, segment_bytes=4096))
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_second_process_is_refused_with_its_pid(tmp_path: Path) -> None:
    """Another process holds it: ConfigError with that pid; once it dies (even killed), the
    lock is gone with it."""
    path = str(tmp_path / "spool")
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(wb.ConfigError, match=rf"in use by pid {child.pid}\b"):
            open_log(tmp_path)
    finally:
        child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
    open_log(tmp_path).close()


def _fork(body: str, log: SpoolLog, pipes: tuple[int, int, int, int] | None = None) -> int:
    """Run ``body`` in a forked child; its exit code (0 when the child saw what it should).
    ``wait`` tells the parent it runs (its at-fork hooks have run) through the first pipe,
    then blocks until the parent closes the second one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            if body == "append":
                try:
                    log.append(rec(1))
                    code = 1
                except SpoolForked as exc:
                    code = 0 if f"belongs to process {os.getppid()}" in str(exc) else 2
            elif body == "wait" and pipes is not None:
                ready_r, ready_w, release_r, release_w = pipes
                os.close(ready_r)
                os.close(release_w)  # so that the parent's close makes an EOF
                os.write(ready_w, b"r")
                while os.read(release_r, 1):
                    pass
                code = 0
        finally:
            os._exit(code)
    return pid


def test_a_forked_child_cannot_use_the_spool(tmp_path: Path) -> None:
    """append() in a forked child raises SpoolForked naming the parent; the parent goes on."""
    with open_log(tmp_path) as log:
        pid = _fork("append", log)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert log.wait_durable(log.append(rec(2)), timeout=10)


def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    """The parent closes while its forked child lives on: the spool opens again at once
    (the child closed its inherited copy of the lock)."""
    log = open_log(tmp_path)
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = _fork("wait", log, (ready_r, ready_w, release_r, release_w))
    os.close(ready_w)
    os.close(release_r)
    try:
        assert os.read(ready_r, 1) == b"r"  # the child runs: it closed its copy of the lock
        log.close()
        open_log(tmp_path).close()  # while the child still lives
    finally:
        os.close(ready_r)
        os.close(release_w)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_lock_file_records_the_owner(tmp_path: Path) -> None:
    """The lock file holds the owner's pid (for the 'in use by' message)."""
    with open_log(tmp_path):
        assert (tmp_path / "spool" / "lock").read_text().strip() == str(os.getpid())
    assert spool_at(tmp_path).path == str(tmp_path / "spool")
