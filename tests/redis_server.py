"""A private ``redis-server`` for tests that kill and restart Redis (the shared one on 6379
is never restarted): a free port, no persistence, SIGKILL to stop, restart on the same port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

__all__ = ["SHARED_URL", "RedisServer", "free_port", "private_redis", "shared_redis"]

SHARED_URL = "redis://127.0.0.1:6379/13"  # the shared server; tests use unique key names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shared_redis() -> redis.Redis:
    """A client of the shared server; fails (never skips) when it is not there."""
    client = redis.Redis.from_url(SHARED_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {SHARED_URL} and is not reachable: {exc!r}")
    return client


class RedisServer:
    """One ``redis-server`` on its own port: ``start()``, ``kill()`` (SIGKILL), ``start()``
    again on the same port (empty: nothing is saved)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            pytest.fail("redis-server is required (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> float:
        """Start it and wait until it answers; the monotonic time it first did."""
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/tmp",
            "--enable-debug-command",
            "yes",
        ]  # fmt: skip  (DEBUG SLEEP stalls it)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return time.monotonic()
                if self.proc.poll() is not None:
                    pytest.fail(f"redis-server on port {self.port} exited ({self.proc.returncode})")
                time.sleep(0.01)
        finally:
            client.close()
        pytest.fail(f"redis-server on port {self.port} did not answer within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, connections reset, every key gone (nothing is saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A started private server, killed at the end whatever happens."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()
