"""CI-sized run of scripts/fuzz_codec.py (the 1,000,000-mutant campaign is run by hand).

Every mutant (flips, truncation, extension, splices, extreme header bytes and varints,
forged packets with a valid CRC...) given to decompress, inspect and accumulate must
decode or raise CorruptPacketError (PacketMismatchError for accumulate), quickly.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_codec.py"


@pytest.fixture(scope="module")
def fuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_codec", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thousands_of_mutants_in_process(fuzz: ModuleType) -> None:
    pool = fuzz.build_pool(seed=7, size=60)
    fuzz.warm_up(pool)  # JIT compilation (a cold numba cache) is not a slow decoder
    outcomes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for index in range(3000):
        kind, data, meta = fuzz.mutant(7, index, pool)
        kinds[kind.split("+")[0]] += 1
        for name, outcome, seconds, error in fuzz.run_one(data, meta):
            assert outcome != "UNEXPECTED", (index, name, kind, error)
            assert seconds < 2.0, (index, name, kind)
            outcomes[f"{name}:{outcome}"] += 1
    assert set(kinds) == set(fuzz.KINDS)
    # the mutants reach every outcome: not all rejected at the door
    for name in ("decompress", "inspect", "accumulate", "decompress_into"):
        assert outcomes[f"{name}:corrupt"] > 0 and outcomes[f"{name}:ok"] > 0
    assert outcomes["accumulate:mismatch"] > 0 and outcomes["decompress_into:mismatch"] > 0


def test_the_pool_and_the_forged_packets_hold_ans_quads(fuzz: ModuleType) -> None:
    import random

    from tenfold.codec import CorruptPacketError, inspect

    pool = fuzz.build_pool(seed=2, size=4)
    versions = Counter(blob[4] for blob, _ in pool)
    assert versions[4] >= 4 and {1, 2, 3} <= set(versions)
    rnd = random.Random(5)
    parsed: Counter[str] = Counter()
    for _ in range(4000):
        blob = fuzz.forge(rnd)
        try:
            info = inspect(blob)
        except CorruptPacketError:
            continue
        parsed.update(t.mode for t in info.tensors)
        if any(t.mode == "ans-quads" for t in info.tensors):
            assert info.version == 4
    # forged quad records get past the header checks to the payload decoder
    assert parsed["ans-quads"] > 0 and parsed["ans-pairs"] > 0 and parsed["ans"] > 0


def test_mutants_are_reproducible(fuzz: ModuleType) -> None:
    pool = fuzz.build_pool(seed=1, size=10)
    assert fuzz.mutant(1, 42, pool)[1] == fuzz.mutant(1, 42, fuzz.build_pool(1, 10))[1]
    assert fuzz.mutant(1, 42, pool)[1] != fuzz.mutant(1, 43, pool)[1]


def test_the_harness_reports_a_wrong_exception(
    fuzz: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = fuzz.build_pool(seed=1, size=4)
    _, data, meta = fuzz.mutant(1, 0, pool)

    def broken(*args: object, **kwargs: object) -> None:
        raise IndexError("out of bounds")

    monkeypatch.setattr("tenfold.codec.inspect", broken)
    results = {name: (outcome, error) for name, outcome, _, error in fuzz.run_one(data, meta)}
    assert results["inspect"][0] == "UNEXPECTED" and "IndexError" in results["inspect"][1]


def test_the_campaign_runs_workers_under_the_watchdog() -> None:
    """The script as run by hand: two spawned workers, merged JSON summary, exit 0."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--iterations", "400", "--jobs", "2", "--pool", "20"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["iterations"] == 400 and summary["jobs"] == 2
    assert summary["unexpected"] == 0 and summary["hangs_or_crashes"] == []
    assert sum(summary["mutations"].values()) == 400
