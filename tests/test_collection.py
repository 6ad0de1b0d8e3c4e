"""CI's own guard: every test file is collected and every source file is linted.

pytest and ruff both skip folders with conventional build-output names (``build``,
``dist``, ...) without a word. That once hid the whole distributed layer from CI (its
package was called ``dist``). These tests compare the files on disk with what the tools
actually see, so a folder that escapes them fails CI instead of silently going untested.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINTED_TREES = ("src", "paper", "tests", "benchmarks", "examples")


def _on_disk(pattern: str, trees: tuple[str, ...]) -> set[str]:
    """Repository-relative POSIX paths matching ``pattern`` under ``trees``, caches excluded."""
    found: set[str] = set()
    for tree in trees:
        for path in (ROOT / tree).rglob(pattern):
            rel = path.relative_to(ROOT)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            found.add(rel.as_posix())
    return found


def _collected_test_files() -> set[str]:
    """The files pytest collects from ``tests/`` (node ids' file parts), via ``--collect-only``."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"pytest --collect-only failed:\n{proc.stdout}\n{proc.stderr}"
    return {line.split("::", 1)[0] for line in proc.stdout.splitlines() if "::" in line}


def test_every_test_file_is_collected() -> None:
    on_disk = _on_disk("test_*.py", ("tests",))
    assert on_disk, "no test files found: is the repository layout intact?"
    missing = sorted(on_disk - _collected_test_files())
    assert not missing, (
        "pytest does not collect these test files (a folder named like a build output, "
        f"a bad norecursedirs, or a file without tests?): {missing}"
    )


def test_ruff_sees_every_python_file() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-files", *LINTED_TREES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    seen = {
        Path(line.strip()).resolve().relative_to(ROOT).as_posix()
        for line in proc.stdout.splitlines()
        if line.strip().endswith(".py")
    }
    missing = sorted(_on_disk("*.py", LINTED_TREES) - seen)
    assert not missing, f"ruff (and so ruff format) skips these files: {missing}"
