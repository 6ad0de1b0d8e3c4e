"""Every script in examples/ runs as its docstring says (torchrun, 2 CPU ranks over gloo, a
few steps) and its ranks end with bit-identical parameters.

The plain-PyTorch examples run in CI (DiLoCo; Local SGD, the same loop without the outer
optimizer, is ``slow``); the ones that import the third-party frameworks
(``transformers``, Lightning, Accelerate: seconds of imports per rank) are ``slow`` too,
to keep CI's examples under two minutes.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from examples_launch import EXAMPLES, ROOT, assert_identical_ranks, describe, run_torchrun

SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def _bytes_sent(proc: subprocess.CompletedProcess[str]) -> list[int]:
    return [int(n) for n in re.findall(r"tenfold hook sent (\d+) bytes", proc.stdout)]


@pytest.mark.parametrize("name", SCRIPTS)
def test_docstring_gives_the_launch_command(name: str) -> None:
    source = (EXAMPLES / name).read_text()
    assert f"torchrun --nproc-per-node 2 examples/{name}" in source, (
        f"examples/{name}: its docstring must give the exact launch command"
    )
    assert "--steps" in source, f"examples/{name}: a --steps flag lets the tests run a few steps"


@pytest.mark.parametrize("name", SCRIPTS)
def test_readme_points_to_every_example(name: str) -> None:
    assert f"examples/{name}" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("scheme", ["diloco", pytest.param("local-sgd", marks=pytest.mark.slow)])
def test_local_sgd_diloco(scheme: str) -> None:
    proc = run_torchrun(
        EXAMPLES / "01_local_sgd_diloco.py",
        "--steps=25",
        "--sync-every=10",
        f"--scheme={scheme}",
    )
    assert_identical_ranks(proc)
    # Two scheduled syncs and the final one (25 is not a multiple of 10).
    assert proc.stdout.count("bits/param") == 2, describe(proc)


def test_ddp_hook() -> None:
    proc = run_torchrun(EXAMPLES / "02_ddp_hook.py", "--steps=20")
    assert_identical_ranks(proc)
    assert "step 20: loss" in proc.stdout, describe(proc)


@pytest.mark.slow
def test_transformers_diloco() -> None:
    proc = run_torchrun(EXAMPLES / "03_transformers_diloco.py", "--steps=20", "--sync-every=10")
    assert_identical_ranks(proc)
    # GPT-2 ties its input embedding and output layer: LocalSGD must keep them one tensor.
    assert proc.stdout.count("embeddings tied: True") == 2, describe(proc)


@pytest.mark.slow
def test_lightning_ddp_hook() -> None:
    proc = run_torchrun(EXAMPLES / "04_lightning_ddp_hook.py", "--steps=10")
    assert_identical_ranks(proc)
    sent = _bytes_sent(proc)
    # On CPU only the callback registers the hook: zero bytes would mean it never ran.
    assert len(sent) == 2 and all(n > 0 for n in sent), describe(proc)


@pytest.mark.slow
def test_accelerate_ddp_hook() -> None:
    proc = run_torchrun(EXAMPLES / "05_accelerate_ddp_hook.py", "--steps=10")
    assert_identical_ranks(proc)
    sent = _bytes_sent(proc)
    assert len(sent) == 2 and all(n > 0 for n in sent), describe(proc)
