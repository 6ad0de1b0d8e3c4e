"""Nothing on the wire (or read from disk) is ever unpickled: a scan of the package source.

Walks the syntax tree of every ``src/tenfold/**/*.py`` and fails on:

* an import of ``pickle`` (or ``_pickle``, ``cPickle``, ``dill``, ``cloudpickle``,
  ``shelve``, ``marshal``, ``joblib``);
* any use of torch.distributed's pickle-based collectives (``all_gather_object``,
  ``broadcast_object_list``, ``gather_object``, ``scatter_object_list``,
  ``send_object_list``, ``recv_object_list``), however they are reached;
* ``torch.load(...)`` without ``weights_only=True``, and ``np.load(..., allow_pickle=True)``.

(torch.multiprocessing's spawn pickles the launcher's arguments through a local pipe to
its own child processes; that is process creation on one machine, not the network.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tenfold"

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal"}
PICKLE_MODULES |= {"joblib"}
PICKLE_COLLECTIVES = {
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "scatter_object_list",
    "send_object_list",
    "recv_object_list",
}


def _is_true(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    """``torch.load`` for ``Attribute(Name('torch'), 'load')``; '' if not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def violations(source: str, filename: str = "<string>") -> list[str]:
    """Every pickle-related construct in ``source``, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    torch_load_names = {"torch.load"}  # plus aliases from `from torch import load as x`
    numpy_names = {"np", "numpy"}

    def add(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    add(node, f"import {alias.name}")
                if alias.name == "numpy" and alias.asname:
                    numpy_names.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in PICKLE_MODULES:
                add(node, f"from {module} import ...")
            for alias in node.names:
                if alias.name in PICKLE_COLLECTIVES:
                    add(node, f"imports {alias.name}")
                if module == "torch" and alias.name == "load":
                    torch_load_names.add(alias.asname or "load")
        elif isinstance(node, ast.Attribute) and node.attr in PICKLE_COLLECTIVES:
            add(node, f"uses {node.attr}")
        elif isinstance(node, ast.Name) and node.id in PICKLE_COLLECTIVES:
            add(node, f"uses {node.id}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            if name in torch_load_names and not (
                "weights_only" in kwargs and _is_true(kwargs["weights_only"])
            ):
                add(node, f"{name}(...) without weights_only=True")
            if (
                name.rpartition(".")[0] in numpy_names
                and name.endswith(".load")
                and "allow_pickle" in kwargs
                and not (
                    isinstance(kwargs["allow_pickle"], ast.Constant)
                    and kwargs["allow_pickle"].value is False
                )
            ):
                add(node, f"{name}(..., allow_pickle=...)")
            if (
                isinstance(node.func, ast.Name)
                and node.func.id in ("getattr",)
                and len(node.args) >= 2
            ):
                attr = node.args[1]
                if isinstance(attr, ast.Constant) and attr.value in PICKLE_COLLECTIVES:
                    add(node, f"getattr(..., {attr.value!r})")
    return found


def test_the_package_source_uses_no_pickle() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20 and SRC / "distributed" / "transport.py" in files
    found = [v for f in files for v in violations(f.read_text(), str(f.relative_to(SRC.parent)))]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import cloudpickle as cp",
        "from pickle import loads",
        "import torch.distributed as dist\ndist.all_gather_object(out, obj)",
        "from torch.distributed import broadcast_object_list",
        "torch.distributed.recv_object_list(objs, src=0)",
        "f = getattr(dist, 'gather_object')",
        "import torch\ntorch.load('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=False)",
        "from torch import load as tl\ntl('m.pt')",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    ],
)
def test_the_scan_catches_each_pattern(snippet: str) -> None:
    assert violations(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('m.pt', weights_only=True)",
        "import numpy as np\nnp.load('a.npy')",
        "import torch.distributed as dist\ndist.all_gather(out, t)",
        "from safetensors.torch import load_file",
    ],
)
def test_the_scan_allows_safe_code(snippet: str) -> None:
    assert violations(snippet) == []
