"""A private PostgreSQL cluster for tests that stop and restart the server.

The shared server on 5432 is used by everyone's tests at once and is never restarted; these
tests get their own cluster: ``initdb`` into a temporary directory (run as the ``postgres``
OS user when we are root), on a free port, with its socket in that directory and trust auth.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["Cluster"]


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One throwaway cluster: ``start()``, ``stop()``, ``restart()``, ``ready()``."""

    def __init__(self) -> None:
        self.bin = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="wb-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.dsn = f"postgresql://root@127.0.0.1:{self.port}/postgres"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            shutil.chown(self.root, self._user)
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "root", "--no-sync",
                  "-E", "UTF8")  # fmt: skip
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",  # survives a server crash (not an OS crash): fine for these tests
            "log_connections": "on",
            "max_connections": "40",
            "shared_buffers": "32MB",
            "shared_preload_libraries": "'pg_stat_statements'",
        }
        with open(self.data / "postgresql.conf", "a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())

    def start(self, *, wait: bool = True) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w" if wait else "-W",
                  "start")  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w",
                  "restart")  # fmt: skip

    def ready(self) -> bool:
        """``pg_isready``: the server accepts connections."""
        cmd = [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
               "-t", "1"]  # fmt: skip
        return subprocess.run(cmd, check=False, timeout=10).returncode == 0

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Poll ``pg_isready`` every 10 ms; the monotonic time it first succeeded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return time.monotonic()
            time.sleep(0.01)
        raise TimeoutError(f"the private PostgreSQL cluster was not ready within {timeout} s")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
