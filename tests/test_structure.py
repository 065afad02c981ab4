"""Boundaries between the packages, read from the source: no import cycles, a lifecycle that needs no server.

Imports are collected wherever they appear (module level, inside functions, under TYPE_CHECKING),
since each one is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from client.harness import ROOT

PACKAGES = ("server", "statemachine", "client")
SOURCE_DIRS = (*PACKAGES, "tests", "bench")


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name, for its `__init__.py`)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The known modules that module `name` (at `path`) imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: set(imported(name, path, set(found))) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each group of modules that import each other (Tarjan's strongly connected components), with one cycle in it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [f"{' -> '.join(_cycle_in(graph, group))} (the group: {', '.join(sorted(group))})" for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group, to print."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not a cycle")


def test_the_packages_import_each_other_without_cycles():
    graph = import_graph()
    assert "server.app" in graph and "statemachine.lifecycle" in graph["statemachine"]
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_lifecycle_imports_nothing_from_the_server():
    graph = import_graph()
    leaks = {
        (name, target)
        for name, targets in graph.items()
        if name.split(".")[0] == "statemachine"
        for target in targets
        if target.split(".")[0] == "server"
    }
    assert not leaks


def _patches_path(source: str) -> bool:
    """Code (not text in a string) that changes `sys.path` in this process: a call on it or an assignment to it."""
    for node in ast.walk(ast.parse(source)):
        target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
        targets = node.targets if isinstance(node, ast.Assign) else [target] if target is not None else []
        if any(ast.unparse(t) == "sys.path" for t in targets):
            return True
    return False


def test_nothing_patches_the_import_path():
    """Tests and benchmarks import the installed packages (and `bench` as `python -m bench.x`), never by path;
    a test that imports a researcher's module from a folder uses pytest's `monkeypatch.syspath_prepend`."""
    patched = [
        str(path.relative_to(ROOT))
        for folder in SOURCE_DIRS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "__pycache__" not in path.parts and _patches_path(path.read_text())
    ]
    assert not patched


def test_the_path_check_finds_a_patch():
    assert _patches_path("import sys\nsys.path.insert(0, 'x')\n") and _patches_path("import sys\nsys.path = []\n")
    assert not _patches_path("code = \"sys.path.insert(0, '/home/pyodide')\"\n")
