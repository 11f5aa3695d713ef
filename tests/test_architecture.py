"""The package's layering, read from its imports (issue #18): every module imports, no
import cycle among gptlab modules, no `_private` name imported from another module."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import gptlab

ROOT = Path(gptlab.__file__).parent

# Known exceptions, each with its reason; the tests fail when one is no longer true, so
# the list cannot go stale.
CYCLE_EXCEPTIONS = {
    # the web page imports the chat route's prompt builder, which app imports back inside a
    # function (serve/ is being reworked separately)
    frozenset({"gptlab.serve.app", "gptlab.serve.web"}),
}
PRIVATE_EXCEPTIONS = {
    ("gptlab.serve.web", "gptlab.serve.app", "_chat_prompt"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str:
    """The gptlab module an imported dotted name lives in (a module or a name inside one)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(tree: ast.AST, nodes) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for the gptlab imports among nodes."""
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.split(".")[0] == "gptlab"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "gptlab":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.append((full, None) if full in MODULES else (node.module, a.name))
    return out


def _top_level(tree: ast.Module):
    """Statements run at import time: the module body and the blocks of its if / try."""
    for node in tree.body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            yield from (n for n in ast.walk(node) if n is not node)


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = _top_level(tree) if top_level_only else ast.walk(tree)
        for target, _ in _imports(tree, nodes):
            owner = _owner(target)
            if owner != mod and not mod.startswith(owner + "."):   # a package's own __init__
                graph[mod].add(owner)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def private_imports() -> set[tuple[str, str, str]]:
    found = set()
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target, name in _imports(tree, ast.walk(tree)):
            if name and name.startswith("_") and not name.startswith("__"):
                found.add((mod, target, name))
    return found


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"gptlab.__main__"}))  # that one runs the CLI
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_cycle_at_import_time():
    assert cycles(import_graph(top_level_only=True)) == []


def test_no_import_cycle_even_through_deferred_imports():
    found = set(cycles(import_graph(top_level_only=False)))
    assert found - CYCLE_EXCEPTIONS == set(), "new import cycle(s)"
    assert CYCLE_EXCEPTIONS - found == set(), "a known cycle is gone: drop it from the list"


def test_no_private_name_imported_across_modules():
    found = private_imports()
    assert found - PRIVATE_EXCEPTIONS == set(), "a _private name is imported from another module"
    assert PRIVATE_EXCEPTIONS - found == set(), "a known exception is gone: drop it from the list"


def test_the_checker_sees_a_cycle_and_a_private_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    tree = ast.parse("def f():\n    from gptlab.engine import _x, y\n")
    assert ("gptlab.engine", "_x") in _imports(tree, ast.walk(tree))
