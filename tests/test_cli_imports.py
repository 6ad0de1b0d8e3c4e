"""The CLI stays light: inspecting a packet must not import torch (seconds of start-up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import tenfold


def test_tenfold_inspect_does_not_import_torch(tmp_path: Path) -> None:
    packet = tmp_path / "p.tf"
    packet.write_bytes(tenfold.compress({"w": np.linspace(-1, 1, 100, dtype=np.float32)}))
    code = (
        "import sys\n"
        "from tenfold.cli import main\n"
        f"rc = main(['inspect', {str(packet)!r}])\n"
        "assert rc == 0, rc\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


def test_lazy_train_exports_resolve() -> None:
    import tenfold.train as train

    for name in train.__all__:
        assert getattr(train, name) is not None, name


def test_a_submodule_does_not_hide_the_export_of_the_same_name() -> None:
    import tenfold.train.launch  # noqa: F401  (binds the submodule on the package)
    from tenfold.train import launch

    assert callable(launch) and not isinstance(launch, type(tenfold))


def test_the_installed_cli_carries_no_reproduction() -> None:
    """``make reproduce`` (paper/) and ``make bench`` (benchmarks/) run from a clone only;
    ``tenfold bench`` runs the library's own ``tenfold.bench`` (tests/test_layers.py checks
    that the library never imports ``benchmarks/``)."""
    from tenfold.cli import SUBCOMMANDS

    assert "reproduce" not in SUBCOMMANDS
    assert SUBCOMMANDS["bench"] == "tenfold.cli.bench_cmd"
    assert all(module.startswith("tenfold.cli.") for module in SUBCOMMANDS.values())


def test_tenfold_bench_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from tenfold.cli import main\n"
        "try:\n"
        "    main(['bench', '--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert "tenfold bench" in out.stdout and "zstd" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
