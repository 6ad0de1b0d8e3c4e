"""Run a script the way a user would, under ``torchrun`` with several CPU ranks, and read
back what each rank printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

#: What every example prints last on each rank: ``rank R/W: ..., checksum HEX``. Lines of
#: two ranks may run together (an unbuffered stdout writes the text and the newline apart).
_CHECKSUM = re.compile(r"rank (\d+)/(\d+): .*?checksum ([0-9a-f]{16})")


def script_env() -> dict[str, str]:
    """The environment of a user's run on a CPU machine with no network: no GPU (gloo, even
    where the test machine has CUDA), no Hugging Face hub, one thread per rank."""
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_python(
    script: Path, *args: str, timeout_s: float = 240.0
) -> subprocess.CompletedProcess[str]:
    """``python SCRIPT ARGS`` in a fresh process, from the repository root."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def run_torchrun(
    script: Path, *args: str, nproc: int = 2, timeout_s: float = 240.0
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node NPROC SCRIPT ARGS`` (a free local port, so
    that concurrent runs do not collide), from the repository root."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(script),
        *args,
    ]
    return subprocess.run(
        cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=timeout_s
    )


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """The command, its exit code and the tails of its output, for a failure message."""
    return (
        f"command: {' '.join(map(str, proc.args))}\nexit code: {proc.returncode}\n"
        f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n--- stderr (tail) ---\n{proc.stderr[-6000:]}"
    )


def checksums(stdout: str, world: int) -> dict[int, str]:
    """Each rank's final parameter checksum, checked to come from a run of ``world`` ranks."""
    found: dict[int, str] = {}
    for rank, size, digest in _CHECKSUM.findall(stdout):
        assert int(size) == world, f"a rank reports a world of {size}, not {world}:\n{stdout}"
        found[int(rank)] = digest
    return found


def assert_identical_ranks(proc: subprocess.CompletedProcess[str], world: int = 2) -> None:
    """The run succeeded and every rank printed the same checksum."""
    assert proc.returncode == 0, describe(proc)
    sums = checksums(proc.stdout, world)
    assert sorted(sums) == list(range(world)), f"missing ranks' checksums\n{describe(proc)}"
    assert len(set(sums.values())) == 1, f"ranks differ: {sums}\n{describe(proc)}"
