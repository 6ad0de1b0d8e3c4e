"""``import tenfold.distributed`` without PyTorch names the extra to install."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
sys.modules["torch"] = None  # what an environment without torch looks like to import
try:
    import tenfold.distributed
except ImportError as exc:
    print(exc)
else:
    print("imported")
"""


def test_the_error_names_the_extra() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=120
    )
    assert "tenfold.distributed needs PyTorch: pip install 'tenfold[torch]'" in out.stdout, out
