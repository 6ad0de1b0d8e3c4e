"""The library never imports the examples' frameworks (Lightning, transformers, Accelerate)
at module level: they are optional extras (``tenfold[examples]``), and ``import tenfold``
must work, and stay fast, without them."""

from __future__ import annotations

import subprocess
import sys

from examples_launch import ROOT, script_env

FRAMEWORKS = ("lightning", "pytorch_lightning", "lightning_fabric", "transformers", "accelerate")

_PROBE = f"""
import sys
import tenfold, tenfold.distributed, tenfold.distributed.hooks, tenfold.train, tenfold.cli
import tenfold.integrations
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FRAMEWORKS!r})
print(",".join(loaded))
"""


def test_library_does_not_import_the_frameworks() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at module level: {proc.stdout.strip()}"


_MISSING = """
import sys
sys.modules["lightning"] = None  # as if not installed
try:
    import tenfold.integrations.lightning
except ImportError as exc:
    from tenfold.errors import TenfoldError
    assert isinstance(exc, TenfoldError), type(exc)
    print(exc)
"""


def test_lightning_integration_says_what_to_install() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _MISSING],
        cwd=ROOT,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'tenfold[examples]'" in proc.stdout
