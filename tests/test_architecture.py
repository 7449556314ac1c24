"""The house without circles: no module of `registry` imports (even lazily, even for types only) a module that
imports it back, and packages import only downwards (docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "registry"
# each package, and what it may import (besides itself and the stdlib/third parties): docs/architecture.md
ALLOWED = {
    "settings": set(),
    "matching": {"settings"},
    "learning": {"settings", "matching", "decide"},
    "decide": {"settings"},
    "store": {"settings", "decide", "matching"},
    "services": {"settings", "store", "decide", "matching", "learning"},
    "ingest": {"settings", "store", "decide", "matching", "services"},
    "curation": {"settings", "store", "decide", "matching", "services"},
    "evaluate": {"settings", "store", "decide", "matching", "services", "ingest", "curation", "learning"},
    "interfaces": {"settings", "store", "decide", "matching", "services", "ingest", "curation", "evaluate",
                   "learning"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("registry"):
                targets.append(node.module)
                targets += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names if a.name.startswith("registry")]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != module:
                    edges[module].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert _cycles(_imports(_modules())) == []


def test_packages_import_only_downwards() -> None:
    wrong = []
    for module, targets in _imports(_modules()).items():
        source = _package(module)
        if source not in ALLOWED:
            continue
        for target in targets:
            package = _package(target)
            if package != source and package in ALLOWED and package not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_checker_finds_a_planted_circle() -> None:
    """The checks above can fail: a circle and an upward import planted in a copy of the graph are found."""
    edges = _imports(_modules())
    edges["registry.store.catalog"].add("registry.services.registry")
    assert any("registry.store.catalog" in c for c in _cycles(edges))
