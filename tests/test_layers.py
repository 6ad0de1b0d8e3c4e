"""The import structure docs/DESIGN.md promises: layers import only the layers below them,
and no module imports itself back through others (no cycles), counting every import:
module level, inside functions, and under ``TYPE_CHECKING``.

A cycle hidden in a function body still couples two modules both ways (neither can be
understood, tested or moved alone); this test is what keeps the layering from eroding.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Lowest first: a module may import its own layer and the ones before it.
LAYERS = ("codec", "distributed", "train", "experiments", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``tenfold...`` module ``path`` imports, anywhere in the file."""
    name = _module_name(path)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("tenfold"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            if not mod.startswith("tenfold"):
                continue
            out.add(mod)
            # ``from tenfold.train import loop`` imports the submodule tenfold.train.loop
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for mod, path in modules.items():
        graph[mod] = {m for m in _imports(path) if m in modules and m != mod}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_layers_import_only_downwards() -> None:
    bad = []
    for mod, deps in _graph().items():
        here = _layer(mod)
        if here is None:
            continue
        for dep in deps:
            there = _layer(dep)
            if there is not None and LAYERS.index(there) > LAYERS.index(here):
                bad.append(f"{mod} -> {dep}")
    assert not bad, f"imports from a higher layer: {sorted(bad)}"


@pytest.mark.parametrize("layer", LAYERS)
def test_no_import_cycles_inside_a_layer(layer: str) -> None:
    graph = _graph()
    # A package's __init__ re-exports its submodules; those edges point down the tree and a
    # submodule importing a sibling through the package is the same sibling edge.
    nodes = {m for m in graph if _layer(m) == layer and m != f"tenfold.{layer}"}
    edges = {m: {d for d in graph[m] if d in nodes} for m in nodes}
    cycles = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d) :], d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(nodes):
        if m not in state:
            visit(m, [])
    assert not cycles, f"import cycles in tenfold.{layer}: {cycles}"


def test_the_graph_sees_function_level_imports() -> None:
    """The checker itself: loop.py imports the checkpoint module inside a function."""
    assert "tenfold.train.checkpoint" in _graph()["tenfold.train.loop"]
