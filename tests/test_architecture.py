"""The package's layering, read from its imports (issue #18): every module imports, no
import cycle among gptlab modules, imports only down the layers of docs/ARCHITECTURE.md,
no `_private` name taken from another module, no module over 600 lines, and every module
listed in docs/ARCHITECTURE.md."""
from __future__ import annotations

import ast
import fnmatch
import importlib
from pathlib import Path

import pytest

import gptlab

ROOT = Path(gptlab.__file__).parent

# Known exceptions, each with its reason; the tests fail when one is no longer true, so
# the list cannot go stale.
CYCLE_EXCEPTIONS: set[frozenset[str]] = set()
PRIVATE_EXCEPTIONS: set[tuple[str, str, str]] = set()


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


# ----------------------------------------------------------------------------- layers

# docs/ARCHITECTURE.md draws these; a module imports only from its own layer or lower ones
# (at import time and inside functions). A new module must be placed here to pass.
LAYERS = [
    ("leaves", ["gptlab", "gptlab.fileio", "gptlab.settings", "gptlab.sandbox",
                "gptlab.data.phrases", "gptlab.evals.metrics", "gptlab.evals.plots",
                "gptlab.scaling_fit"]),
    ("core", ["gptlab.model", "gptlab.tokenizer", "gptlab.checkpoint", "gptlab.decode",
              "gptlab.engine", "gptlab.chat", "gptlab.chat.*", "gptlab.tools", "gptlab.tool_format",
              "gptlab.data", "gptlab.data.*", "gptlab.train", "gptlab.train.dist",
              "gptlab.train.optim"]),
    ("shared parts", ["gptlab.train.checkpoints", "gptlab.train.metrics", "gptlab.train.loop",
                      "gptlab.train.lora", "gptlab.align", "gptlab.evals.tasks",
                      "gptlab.evals.table", "gptlab.evals.tools_eval", "gptlab.evals.tools_api", "gptlab.evals.code_eval", "gptlab.evals.bpb",
                      "gptlab.evals.calibration", "gptlab.safety.moderator",
                      "gptlab.safety.examples", "gptlab.safety.attacks", "gptlab.judge",
                      "gptlab.judge.*", "gptlab.feedback", "gptlab.interop", "gptlab.interop.*"]),
    ("stages", ["gptlab.train.pretrain", "gptlab.train.sft", "gptlab.train.sft_data",
                "gptlab.align.*", "gptlab.scaling", "gptlab.scaling_plot", "gptlab.safety",
                "gptlab.safety.*", "gptlab.evals", "gptlab.evals.runner", "gptlab.serve",
                "gptlab.serve.*"]),
    ("entry points", ["gptlab.cli", "gptlab.cli_*", "gptlab.__main__", "gptlab.speedrun",
                      "gptlab.speedrun_assistant", "gptlab.report", "gptlab.chat.terminal"]),
]


def layer_of(module: str) -> int:
    """The index in LAYERS of a module: an exact name wins over a pattern."""
    for exact in (True, False):
        for i, (_, patterns) in enumerate(LAYERS):
            if any(module == p if exact else fnmatch.fnmatchcase(module, p) for p in patterns):
                return i
    raise KeyError(f"{module} is in no layer of tests/test_architecture.py's LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(m, d) for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)}


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_imports_only_go_down_the_layers():
    assert upward_imports(import_graph(top_level_only=False)) == set()


def test_the_layer_check_sees_an_upward_import():
    assert upward_imports({"gptlab.model": {"gptlab.cli"}}) == {("gptlab.model", "gptlab.cli")}


def imports_of_own_package() -> set[tuple[str, str]]:
    """(module, its package) where a module imports the `__init__` of a package it is in,
    which only re-exports: a door in from outside, and a cycle waiting to happen inside. The
    top package `gptlab` (its version string) is a leaf and may be imported anywhere."""
    found = set()
    for mod, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target, _ in _imports(tree, ast.walk(tree)):
            owner = _owner(target)
            if owner != "gptlab" and mod.startswith(owner + "."):
                found.add((mod, owner))
    return found


def test_a_package_s_modules_import_each_other_not_the_package():
    assert imports_of_own_package() == set()


# ----------------------------------------------------------------------------- sizes

MAX_LINES = 600
SIZE_EXCEPTIONS: dict[str, str] = {}   # module -> why it may be longer


def oversized() -> dict[str, int]:
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    return {m: n for m, n in sizes.items() if n > MAX_LINES}


def test_no_module_over_the_size_limit():
    found = oversized()
    assert set(found) - set(SIZE_EXCEPTIONS) == set(), f"split these modules: {found}"
    assert set(SIZE_EXCEPTIONS) - set(found) == set(), "a size exception is gone: drop it"


# ----------------------------------------------------------------------------- private names

def private_attributes() -> set[tuple[str, str, str]]:
    """`alias._name` where alias is a gptlab module imported into another module."""
    found = set()
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names
                                if a.asname and a.name in MODULES})
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                                if f"{node.module}.{a.name}" in MODULES})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and aliases[node.value.id] != mod:
                found.add((mod, aliases[node.value.id], node.attr))
    return found


def test_no_private_attribute_of_another_module():
    assert private_attributes() == set()


# ----------------------------------------------------------------------------- the map

DOC = ROOT.parent / "docs" / "ARCHITECTURE.md"


def test_every_module_is_in_the_architecture_doc():
    """Each module's path under gptlab/ (`train/sft`, `serve/app`) stands in the doc's table."""
    text = DOC.read_text(encoding="utf-8")
    missing = [m for m, p in MODULES.items() if p.name != "__init__.py"
               and f"`{p.relative_to(ROOT).with_suffix('').as_posix()}`" not in text]
    assert missing == [], "add these modules to docs/ARCHITECTURE.md's module table"


# ----------------------------------------------------------------------------- package data

def test_every_data_file_of_the_package_is_shipped():
    """The package reads data files beside its modules (miniworld's wordings, the web chat's
    static files): each must match a pattern of pyproject's package-data, or an installed
    (non-editable) gptlab would lack it. Editable installs and this checkout never show it."""
    import subprocess
    import tomllib

    patterns = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["gptlab"]
    shipped = {p.relative_to(ROOT).as_posix() for pat in patterns for p in ROOT.glob(pat) if p.is_file()}
    tracked = subprocess.run(["git", "ls-files", "gptlab"], cwd=ROOT.parent, capture_output=True,
                             text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    data = {Path(t).relative_to("gptlab").as_posix() for t in tracked if not t.endswith(".py")}
    assert data, "the package has data files (world_templates.toml, serve/static/...)"
    assert sorted(data - shipped) == []
