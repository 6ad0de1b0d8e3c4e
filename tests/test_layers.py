"""The import structure docs/DESIGN.md promises, counting every import: module level, inside
functions, and under ``TYPE_CHECKING``.

* Inside the library (``src/tenfold``) the layers are errors < codec < distributed <
  integrations (the third-party training tools' glue) < train < bench (the codec's speed
  benchmark; its data is a model's pseudo-gradient) < cli: each imports only its
  own layer and the ones below it, with no cycles inside a layer.
* The library never imports the repository's research and tooling code (``paper``, the
  ``benchmarks/`` scripts, ``tests``): ``pip install .`` ships ``src/tenfold`` alone.
* ``paper`` (the reproduction, not installed) sits on top: it imports the library's layers
  up to ``train`` (never the command line), and nothing in the library imports it back.

A cycle hidden in a function body still couples two modules both ways (neither can be
understood, tested or moved alone); this test is what keeps the layering from eroding.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PAPER = ROOT / "paper"

#: Lowest first: a module may import its own layer and the ones before it.
LAYERS = ("errors", "codec", "distributed", "integrations", "train", "bench", "cli")
#: The library layers ``paper`` may use (the command line is a user interface, not an API).
PAPER_MAY_IMPORT = ("errors", "codec", "distributed", "integrations", "train")
#: Top-level names of the repository's code that is not the library.
NOT_LIBRARY = ("paper", "benchmarks", "tests")


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_imports(path: Path, base: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (relative imports resolved)."""
    name = _module_name(path, base)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                pkg = name.split(".")
                pkg = pkg if is_package else pkg[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join([*pkg, node.module] if node.module else pkg)
            else:
                mod = node.module or ""
            out.add(mod)
            # ``from tenfold.train import loop`` imports the submodule tenfold.train.loop
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _top(module: str) -> str:
    return module.split(".")[0]


def _files() -> dict[str, Path]:
    """Module name -> file, for the library and for ``paper``."""
    files = {_module_name(p, SRC): p for p in (SRC / "tenfold").rglob("*.py")}
    files.update({_module_name(p, ROOT): p for p in PAPER.rglob("*.py")})
    return files


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of the library and of ``paper`` that it imports."""
    files = _files()
    roots = ("tenfold", "paper")
    graph = {}
    for mod, path in files.items():
        base = ROOT if _top(mod) == "paper" else SRC
        deps = {m for m in _all_imports(path, base) if _top(m) in roots}
        graph[mod] = {m for m in deps if m in files and m != mod}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "paper":
        return "paper"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_the_tree_is_where_the_checks_look() -> None:
    graph = _graph()
    for layer in LAYERS:
        assert any(_layer(m) == layer for m in graph), f"no module in layer {layer}"
    assert "paper.report" in graph and "paper.reproduce" in graph
    assert not (SRC / "tenfold" / "experiments").exists()


def test_layers_import_only_downwards() -> None:
    bad = []
    for mod, deps in _graph().items():
        here = _layer(mod)
        if here is None or here == "paper":
            continue
        for dep in deps:
            there = _layer(dep)
            if there == "paper" or (there is not None and LAYERS.index(there) > LAYERS.index(here)):
                bad.append(f"{mod} -> {dep}")
    assert not bad, f"imports from a higher layer: {sorted(bad)}"


def test_the_library_never_imports_the_repository_code() -> None:
    bad = []
    for path in (SRC / "tenfold").rglob("*.py"):
        for dep in _all_imports(path, SRC):
            if _top(dep) in NOT_LIBRARY or _top(dep).startswith(("bench", "test_")):
                bad.append(f"{_module_name(path, SRC)} -> {dep}")
    assert not bad, f"the installed package imports code that is not installed: {sorted(bad)}"


def test_paper_imports_the_library_only_downwards() -> None:
    bad = []
    for mod, deps in _graph().items():
        if _layer(mod) != "paper":
            continue
        for dep in deps:
            there = _layer(dep)
            if _top(dep) == "tenfold" and there is not None and there not in PAPER_MAY_IMPORT:
                bad.append(f"{mod} -> {dep}")
    assert not bad, f"paper imports the library's command line: {sorted(bad)}"


@pytest.mark.parametrize("layer", [*LAYERS, "paper"])
def test_no_import_cycles_inside_a_layer(layer: str) -> None:
    graph = _graph()
    # A package's __init__ re-exports its submodules; those edges point down the tree and a
    # submodule importing a sibling through the package is the same sibling edge.
    packages = {f"tenfold.{layer}", "paper"}
    nodes = {m for m in graph if _layer(m) == layer and m not in packages}
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
    assert not cycles, f"import cycles in {layer}: {cycles}"


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker itself: imports in function bodies, under TYPE_CHECKING, and relative."""
    pkg = tmp_path / "tenfold" / "train"
    pkg.mkdir(parents=True)
    (pkg / "mod.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from tenfold.cli import main\n"
        "def f():\n"
        "    import paper.report\n"
        "    from ..codec import api\n"
    )
    found = _all_imports(pkg / "mod.py", tmp_path)
    assert {"tenfold.cli.main", "paper.report", "tenfold.codec.api"} <= found


def test_the_protocol_makes_no_torch_distributed_call_of_its_own() -> None:
    """The sync is written once in ``tenfold.distributed.protocol`` over a ``Transport``;
    only ``distributed/transport.py`` (and the drivers) talk to ``torch.distributed``."""
    bad = []
    for path in sorted((SRC / "tenfold" / "distributed" / "protocol").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names]
            bad += [f"{path.name}: {n}" for n in names if n.startswith("torch.distributed")]
    assert not bad, f"torch.distributed imported in the protocol: {bad}"
