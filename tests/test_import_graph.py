"""The import graph keeps the architecture: every arrow points down to the core.

- the core imports nothing of ours above it;
- a technique (``attn_processors.<name>``) imports only the core and itself, never another technique;
- the library never imports the worlds, pipelines, apps or benchmarks; the worlds may import it;
- no two packages import each other, and no module-level import cycle exists.

Imports are read from the source with ``ast`` (function-level imports included), so a lazy import
cannot hide an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("attn_processors", "worlds", "pipelines", "apps", "benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of our modules that `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {m for m in found if m.split(".")[0] in OURS}


def _modules(*packages: str) -> dict[str, Path]:
    return {_module_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def _unit(module: str) -> str:
    """The architectural unit a module belongs to: attn_processors.<part>, worlds.<world>, or the top."""
    parts = module.split(".")
    if parts[0] in ("attn_processors", "worlds") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


LIBRARY = _modules("attn_processors")
EVERYTHING = _modules(*OURS)
TECHNIQUES = sorted({_unit(m) for m in LIBRARY} - {"attn_processors", "attn_processors.core",
                                                   "attn_processors.testing"})


def test_the_walk_sees_the_techniques():
    expected = {"attn_processors.layout", "attn_processors.sage", "attn_processors.tile_sparse"}
    assert expected <= set(TECHNIQUES)


def test_core_imports_nothing_of_ours_above_it():
    bad = {m: sorted(i for i in _imports(p) if _unit(i) != "attn_processors.core")
           for m, p in LIBRARY.items() if _unit(m) == "attn_processors.core"}
    assert {m: b for m, b in bad.items() if b} == {}


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_a_technique_imports_only_the_core_and_itself(technique):
    allowed = {"attn_processors.core", technique}
    bad = {m: sorted(i for i in _imports(p) if _unit(i) not in allowed and i != "attn_processors")
           for m, p in LIBRARY.items() if _unit(m) == technique}
    assert {m: b for m, b in bad.items() if b} == {}


def test_the_library_never_imports_worlds_pipelines_apps_or_benchmarks():
    bad = {m: sorted(i for i in _imports(p) if not i.startswith("attn_processors"))
           for m, p in LIBRARY.items()}
    assert {m: b for m, b in bad.items() if b} == {}


def test_worlds_import_only_the_library_and_worlds():
    worlds = {m: p for m, p in EVERYTHING.items() if m.startswith("worlds")}
    assert worlds, "no world modules found"
    bad = {m: sorted(i for i in _imports(p) if i.split(".")[0] not in ("attn_processors", "worlds"))
           for m, p in worlds.items()}
    assert {m: b for m, b in bad.items() if b} == {}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph `edges`, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_two_units_import_each_other():
    edges: dict[str, set[str]] = {}
    for m, p in EVERYTHING.items():
        for i in _imports(p):
            if _unit(i) != _unit(m) and _unit(m) != "attn_processors":  # the package top re-exports
                edges.setdefault(_unit(m), set()).add(_unit(i))
    assert _cycle(edges) is None


def test_no_module_level_import_cycle():
    edges = {m: {i for i in _imports(p, top_level_only=True) if i in EVERYTHING and i != m}
             for m, p in EVERYTHING.items()}
    # a package's __init__ importing its own submodules is how packages re-export; the cycle that
    # matters is between modules, so edges into a package's __init__ from inside it are dropped
    for m in edges:
        edges[m] = {i for i in edges[m] if not (m.startswith(i + ".") and EVERYTHING[i].stem == "__init__")}
    assert _cycle(edges) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
