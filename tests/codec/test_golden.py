"""Golden packets (tests/codec/golden/) freeze the wire format.

Regenerate only deliberately: ``.venv/bin/python tests/codec/golden/regenerate.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tenfold.codec import BFloat16Bits, Policy, compress, decompress, inspect

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.bin"))
#: packets of an earlier encoder, kept to prove they still decode exactly: TargetRate's
#: per-tensor rate control before the packet-level one (format version 3) made them
DECODE_ONLY = {"v2_target_rate_ans", "v2_bfloat16_target_rate_ans"}


def test_golden_files_exist() -> None:
    assert len(CASES) >= 6, "golden packets missing: run tests/codec/golden/regenerate.py"


@pytest.mark.parametrize("case", CASES)
def test_golden_packet_decodes_to_the_committed_arrays(case: str) -> None:
    blob = (GOLDEN / f"{case}.bin").read_bytes()
    meta = json.loads((GOLDEN / f"{case}.json").read_text())
    out = decompress(blob)
    assert list(out) == [t["name"] for t in meta["info"]["tensors"]]
    with np.load(GOLDEN / f"{case}.decoded.npz") as expected:
        for name, arr in out.items():
            want = expected[name]
            assert arr.dtype == want.dtype and arr.shape == want.shape
            assert arr.tobytes() == want.tobytes(), name
    info = json.loads(json.dumps(inspect(blob).as_dict()))
    if info["version"] == 1:
        # fields added with version 2 (the mid-tread quantizer) are absent from v1 records
        for t in info["tensors"]:
            assert (t.pop("step"), t.pop("clamped")) == (None, 0)
    assert info == meta["info"]


@pytest.mark.parametrize("case", CASES)
def test_encoder_still_produces_the_golden_bytes(case: str) -> None:
    if case in DECODE_ONLY:
        pytest.skip("an earlier encoder's packet: decode-only")
    blob = (GOLDEN / f"{case}.bin").read_bytes()
    meta = json.loads((GOLDEN / f"{case}.json").read_text())
    with np.load(GOLDEN / f"{case}.input.npz") as inputs:
        tensors = {name: inputs[name] for name in inputs.files}
    # npz keeps insertion order; the packet's order is the reference. npz has no bfloat16:
    # those inputs are stored as their uint16 bit patterns.
    tensors = {
        t["name"]: BFloat16Bits(tensors[t["name"]])
        if t["dtype"] == "bfloat16"
        else tensors[t["name"]]
        for t in meta["info"]["tensors"]
    }
    policy = Policy.from_config(meta["policy"])
    assert compress(tensors, policy, grad_rms=meta["grad_rms"]) == blob


def test_the_golden_packets_cover_every_version_and_mode() -> None:
    infos = [json.loads((GOLDEN / f"{case}.json").read_text())["info"] for case in CASES]
    assert {info["version"] for info in infos} == {1, 2, 3, 4}
    modes = {(info["version"], t["mode"], t["bits"]) for info in infos for t in info["tensors"]}
    # ans-quads (version 4) at both of its widths; the other modes at least once
    assert {(4, "ans-quads", 1), (4, "ans-quads", 2)} <= modes
    names = {mode for _, mode, _ in modes}
    assert names >= {"constant", "huffman", "bitpack", "raw", "ans", "group", "ans-pairs"}
