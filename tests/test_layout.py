"""The layout stays easy to see: no import cycles among the package's modules, counting
module-level imports and those made only for type checking (a lazy import inside a function
is how an optional dependency is reached, and is not counted)."""

from __future__ import annotations

import ast
from pathlib import Path

import writebehind

ROOT = Path(writebehind.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    nodes: list[ast.stmt] = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks count
            nodes.extend(node.body)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("writebehind"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("writebehind"))
    return found


def test_no_import_cycles() -> None:
    """Depth-first search over the import graph finds no cycle (it found dlq/_store <->
    dlq/_replay and cli/demo <-> cli/_report before they were broken)."""
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {
        name: {t for t in _imports(path, name) if t in files and t != name}
        for name, path in files.items()
    }
    # a package's __init__ re-exports its modules; importing a sibling through the package
    # is not a cycle of the modules themselves
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
