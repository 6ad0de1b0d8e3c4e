"""Every ```python block of README.md runs as written, and prints what the README says.

Conventions in the README's blocks:

* a first line ``# torchrun --nproc-per-node N this.py`` marks a script for N ranks: it is
  saved as ``this.py`` and launched with torchrun (CPU, gloo); any other block runs in one
  ``python`` process;
* a line ``# prints: TEXT`` states a line the block prints. In a one-process block the
  printed lines must be exactly those, in order; in a torchrun block each must be printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from examples_launch import ROOT, describe, run_python, run_torchrun

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_TORCHRUN = re.compile(r"# torchrun --nproc-per-node (\d+) this\.py\s*$")
_PRINTS = "# prints: "


@dataclass(frozen=True)
class Snippet:
    line: int  # of the opening fence in README.md, 1-based
    code: str
    nproc: int  # 0: one plain python process

    @property
    def expected(self) -> list[str]:
        return [
            line.strip()[len(_PRINTS) :]
            for line in self.code.splitlines()
            if line.strip().startswith(_PRINTS)
        ]


def readme_snippets() -> list[Snippet]:
    text = (ROOT / "README.md").read_text()
    snippets = []
    for match in _BLOCK.finditer(text):
        code = match.group(1)
        first = code.splitlines()[0] if code.strip() else ""
        launch = _TORCHRUN.match(first)
        line = text.count("\n", 0, match.start()) + 1
        snippets.append(Snippet(line, code, int(launch.group(1)) if launch else 0))
    return snippets


SNIPPETS = readme_snippets()


def test_readme_has_snippets_of_both_kinds() -> None:
    assert any(s.nproc == 0 for s in SNIPPETS), "no single-process python block found"
    assert any(s.nproc > 1 for s in SNIPPETS), "no torchrun python block found"
    assert any(s.expected for s in SNIPPETS), "no block states what it prints"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"README.md:{s.line}" for s in SNIPPETS])
def test_snippet_runs_as_written(snippet: Snippet, tmp_path: Path) -> None:
    script = tmp_path / "this.py"
    script.write_text(snippet.code)
    proc = run_torchrun(script, nproc=snippet.nproc) if snippet.nproc else run_python(script)
    where = f"README.md line {snippet.line}\n{describe(proc)}"
    assert proc.returncode == 0, where
    if not snippet.expected:
        return
    if snippet.nproc:
        for line in snippet.expected:
            assert line in proc.stdout.splitlines(), f"does not print {line!r}: {where}"
    else:
        assert proc.stdout.splitlines() == snippet.expected, (
            f"prints {proc.stdout.splitlines()!r}, the README says {snippet.expected!r}: {where}"
        )
