"""The Python blocks of README.md and docs/*.md, and how each is checked
(tests/test_docs_snippets.py).

Every block is compiled. Then, by what the HTML comment right before its fence says:

- nothing: it runs, in a subprocess of its own, after :data:`PRELUDE` (the imports and the
  names the docs' fragments take as given: ``sink``, ``dsn``, ``records``, ...), in one
  coroutine, so top-level ``await`` works; a block starting with ``>>>`` runs as a session;
- ``<!-- snippet: setup ... -->`` (the code up to ``-->``): it runs after that code too;
  ``stop_after(seconds)`` there ends a block that runs until cancelled (a consumer);
- ``<!-- snippet: excerpt of PATH -->``: it must appear verbatim in ``PATH``, a file that
  other tests run (the deployment recipes);
- ``<!-- snippet: compile only: REASON -->``: it is only compiled, for the reason given
  (a framework module of the reader's project, a certificate file of theirs).

The docs name hosts as a reader's system would (``db:5432``, ``redis.internal``);
:data:`HOSTS` maps them to the servers the tests use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HOSTS", "PRELUDE", "ROOT", "Snippet", "snippets"]

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_MARK = re.compile(
    r"<!-- snippet: (?P<kind>setup|compile only: |excerpt of )(?P<arg>(?:(?!-->).)*?)\s*-->\n",
    re.S,
)

HOSTS = {
    "postgresql://app@db:5432/fleet": "postgresql://root@127.0.0.1:5432/test",
    "redis://redis.internal:6379/0": "redis://127.0.0.1:6379/0",
}


@dataclass(frozen=True)
class Snippet:
    path: str  # relative to the repository
    line: int  # of the fence
    code: str
    setup: str = ""
    compile_only: str | None = None  # the reason, when it is not run
    excerpt_of: str | None = None  # the file it must appear in, verbatim

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.compile_only is None and self.excerpt_of is None

    def source(self) -> str:
        """What runs after the prelude: the setup, then the block (hosts mapped)."""
        code = self.setup + "\n" + self.code
        for theirs, ours in HOSTS.items():
            code = code.replace(theirs, ours)
        return code


def snippets() -> list[Snippet]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for m in _BLOCK.finditer(text):
            before = text[: m.start()]
            start = before.rfind("<!-- snippet:")
            mark = _MARK.fullmatch(before, start) if start >= 0 else None
            kind, arg = (mark.group("kind"), mark.group("arg")) if mark else (None, "")
            found.append(
                Snippet(
                    str(doc.relative_to(ROOT)),
                    before.count("\n") + 1,
                    m.group(1),
                    setup=arg if kind == "setup" else "",
                    compile_only=arg if kind == "compile only: " else None,
                    excerpt_of=arg if kind == "excerpt of " else None,
                )
            )
    return found


PRELUDE = """
import asyncio, os, socket, ssl, sys, tempfile, uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import writebehind as wb
from writebehind.dlq import PostgresDeadLetter, SQLiteDeadLetter
from writebehind.integrations.prometheus import PrometheusCollector
from writebehind.testing import MemorySink

os.chdir(tempfile.mkdtemp(prefix="wb-snippet-"))
dsn = DSN = "postgresql://root@127.0.0.1:5432/test"
redis_url = "redis://127.0.0.1:6379/0"
sink = MemorySink()
record = {"id": "a1", "v": 1, "updated_at": 1.0, "status": "ok", "ru": 1}
records = [dict(record, id=f"a{i}") for i in range(10)]
_stopped = False


def stop_after(seconds: float) -> None:
    # for a block that runs until cancelled (a stream consumer): cancel it then
    global _stopped
    _stopped = True
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().call_later(seconds, task.cancel)
"""
