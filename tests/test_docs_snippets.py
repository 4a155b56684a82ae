"""Every Python block in README.md and docs/*.md compiles, and runs or is checked against
the file it quotes (issue 15): a snippet can no longer break unnoticed. See
tests/snippets.py for how each block is treated."""

from __future__ import annotations

import ast
import doctest
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from .pg import DSN
from .snippets import PRELUDE, ROOT, Snippet, snippets

pytestmark = pytest.mark.server  # some blocks write to the local PostgreSQL or Redis

ALL = snippets()
RUN = [s for s in ALL if s.runs]
QUOTED = [s for s in ALL if s.excerpt_of]
_RUNNER = """
import ast, asyncio, sys
source, name = sys.stdin.read().split("\\0")
code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
ns = {"__name__": "__main__"}
result = eval(code, ns)
if asyncio.iscoroutine(result):
    try:
        asyncio.run(result)
    except asyncio.CancelledError:
        if not ns.get("_stopped"):  # stop_after() ended it: the block ran until then
            raise
"""


@pytest.fixture(autouse=True, scope="module")
def _tidy() -> Iterator[None]:
    """Drop the tables the snippets' setups create in the test database."""
    yield
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        for table in ("agent_connections", "jobs", "agents", "deploy_requests"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def _code(snippet: Snippet) -> str:
    code = snippet.code
    if code.lstrip().startswith(">>>"):
        code = "\n".join(e.source for e in doctest.DocTestParser().get_examples(code))
    return code


def test_the_docs_have_snippets_and_few_are_only_compiled() -> None:
    assert len(ALL) >= 40  # README.md and docs/*.md: a collector that finds none is broken
    excused = [s.id for s in ALL if s.compile_only is not None]
    assert len(excused) <= len(ALL) // 8, excused
    assert all(s.compile_only for s in ALL if s.compile_only is not None)  # with a reason


@pytest.mark.parametrize("snippet", ALL, ids=[s.id for s in ALL])
def test_snippet_compiles(snippet: Snippet) -> None:
    compile(_code(snippet), snippet.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("snippet", QUOTED, ids=[s.id for s in QUOTED])
def test_snippet_quotes_its_file(snippet: Snippet) -> None:
    """The deployment recipes quote examples that tests/test_deployment.py runs."""
    assert snippet.excerpt_of is not None
    quoted = (ROOT / snippet.excerpt_of).read_text()
    assert snippet.code.strip() in quoted, f"{snippet.id} is no longer in {snippet.excerpt_of}"


@pytest.mark.parametrize("snippet", RUN, ids=[s.id for s in RUN])
def test_snippet_runs(snippet: Snippet) -> None:
    source = (
        textwrap.dedent(PRELUDE)
        + "\n"
        + Snippet(snippet.path, snippet.line, _code(snippet), snippet.setup).source()
    )
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER], input=f"{source}\0{snippet.id}",
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "examples"), str(ROOT)])},
    )  # fmt: skip
    assert proc.returncode == 0, f"{snippet.id} failed:\n{proc.stderr[-3000:]}"
