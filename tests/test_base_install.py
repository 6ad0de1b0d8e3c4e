"""The base install is the codec: ``import tenfold`` and a compress/decompress round trip work
with numpy and numba alone; the other layers say which extra to install (pyproject.toml).

The process under test cannot import torch or any other extra's package: a meta-path finder
installed before anything else raises ImportError for them, as on a machine where only
``pip install tenfold`` ran.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tenfold"

#: Packages only the extras bring (``torch``, ``train``, ``paper``, ``test``).
NOT_IN_BASE = ("torch", "scipy", "matplotlib", "tqdm", "safetensors", "zstandard", "constriction")

BLOCKER = f"""
import importlib.abc, sys

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_IN_BASE!r}:
            raise ImportError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Absent())
"""


def _run_without_extras(code: str) -> subprocess.CompletedProcess[str]:
    program = BLOCKER + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_the_codec_round_trips_without_torch() -> None:
    out = _run_without_extras(
        """
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker let torch through")
        import numpy as np
        import tenfold
        rng = np.random.default_rng(0)
        arrays = {"w": rng.laplace(0, 1e-3, (64, 50)).astype(np.float32),
                  "b": rng.normal(size=50).astype(np.float32)}
        for policy in (tenfold.TargetRate(bits_per_param=1.0), tenfold.EntropyAdaptive(c=6),
                       tenfold.Lossless()):
            back = tenfold.decompress(tenfold.compress(arrays, policy))
            assert set(back) == set(arrays)
            for k in arrays:
                assert back[k].shape == arrays[k].shape and back[k].dtype == arrays[k].dtype
        assert all(np.array_equal(back[k], arrays[k]) for k in arrays)  # Lossless
        tenfold.inspect(tenfold.compress(arrays))
        print(sorted(m for m in sys.modules if m.split(".")[0] in NOT_IN_BASE))
        """.replace("NOT_IN_BASE", repr(NOT_IN_BASE))
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_the_distributed_layer_names_the_extra_without_torch() -> None:
    out = _run_without_extras(
        """
        try:
            import tenfold.distributed
        except ImportError as exc:
            print("MESSAGE:", exc)
        else:
            raise SystemExit("tenfold.distributed imported without torch")
        """
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tenfold[torch]" in out.stdout, out.stdout


def test_the_codec_imports_no_extra_anywhere() -> None:
    """Not even inside a function: the codec layer is numpy + numba (and the stdlib)."""
    files = [*(SRC / "codec").rglob("*.py"), SRC / "__init__.py", SRC / "errors.py"]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            bad += [
                f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in NOT_IN_BASE
            ]
    assert not bad, bad
