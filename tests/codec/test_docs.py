"""The examples in the codec's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "tenfold.codec",
    "tenfold.codec.api",
    "tenfold.codec.bfloat16",
    "tenfold.codec.errors",
    "tenfold.codec.huffman",
    "tenfold.codec.midtread",
    "tenfold.codec.packet",
    "tenfold.codec.policy",
    "tenfold.codec.quantize",
    "tenfold.codec.ratecontrol",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_format_doc_example_matches_the_codec() -> None:
    """docs/FORMAT.md's second worked example, byte for byte."""
    import numpy as np

    from tenfold.codec import Fixed, compress

    blob = compress({"v": np.array([0, 0.5, 1], np.float32)}, Fixed(2))
    assert blob.hex(" ").upper() == (
        "54 46 4C 44 01 01 01 76 02 01 03 02 02 00 00 C0 7F 00 00 00 00 00 00 80 3F 38 6B 6F 90 7E"
    )


def test_format_doc_bfloat16_example_matches_the_codec() -> None:
    """docs/FORMAT.md's bfloat16 worked example, byte for byte, and its decoded values."""
    from tenfold.codec import BFloat16Bits, Fixed, compress, decompress

    x = BFloat16Bits.from_float([0, 0.05, 0.1])
    assert x.bits.tolist() == [0x0000, 0x3D4D, 0x3DCD]
    blob = compress({"v": x}, Fixed(2))
    assert blob.hex(" ").upper() == (
        "54 46 4C 44 02 01 01 76 04 01 03 02 02 00 00 C0 7F 00 00 CD 3D 38 57 78 36 DD"
    )
    assert decompress(blob)["v"].tolist() == [0.01251220703125, 0.0625, 0.08740234375]


def test_format_doc_version_3_example_matches_the_codec() -> None:
    """docs/FORMAT.md's version-3 (group section) example, byte for byte."""
    import numpy as np

    from tenfold.codec import TargetRate, compress, decompress, inspect

    x = np.array([0.75, -0.375, 0, 0, 0.375, 0, 0, -0.75], np.float32)
    b = np.array([0.1875, -0.1875, 0, 0], np.float32)
    blob = compress({"w": x, "b": b}, TargetRate(1.0), scale={"w": 0.125, "b": 0.0625})
    assert blob.hex(" ").upper() == (
        "54 46 4C 44 03 02 01 77 02 01 08 15 00 00 00 00 00 00 D8 3F "
        "01 62 02 01 04 15 00 00 00 00 00 00 C8 3F 03 03 0C 0C D5 02 AB 05 80 10 AB 05 "
        "D5 02 00 02 04 04 04 04 CD 4E B0 01 63 62 47 00 00 14 08 00 81 64 30 00 F1 69 FE 55"
    )
    out = decompress(blob)
    assert out["w"].tolist() == x.tolist() and out["b"].tolist() == b.tolist()
    assert [t.nbytes for t in inspect(blob).tensors] == [38, 26]


def test_format_doc_version_4_example_decodes() -> None:
    """docs/FORMAT.md's version-4 (ans-quads) example, byte for byte, built as section 6D
    says (ans over the quad symbols), and what it decodes to."""
    import numpy as np

    from tenfold.codec import ans, decompress, inspect
    from tenfold.codec.packet import (
        MODE_ANS_QUADS,
        QUANT_STEP,
        encode_record_header,
        finish_packet,
        packet_header,
    )

    quads = np.array([1 | 2 << 2 | 0 << 4 | 1 << 6, 1 | 3 << 2], np.uint16)
    assert quads.tolist() == [73, 13]
    freq = np.zeros(256, np.int64)
    freq[quads] = 2048
    table = ans.pack_frequencies(freq)
    lanes = ans.encode(quads, freq, 12)
    header = encode_record_header(
        name="q", dtype=np.dtype(np.float32), shape=(6,), mode=MODE_ANS_QUADS, quant=QUANT_STEP,
        bits=2, entropy=None, w_min=-0.5, w_max=1.0, step=0.5, qmin=-1, clamped=0,
        scale_bits=12, table=table, stream_nbytes=[lane.size for lane in lanes],
    )  # fmt: skip
    blob = finish_packet([packet_header(1, 4), header, *lanes])
    assert blob.hex(" ").upper() == (
        "54 46 4C 44 04 01 01 71 02 01 06 17 02 00 00 C0 7F 00 00 00 BF 00 00 80 3F "
        "00 00 00 00 00 00 E0 3F 01 00 0C 0B 00 0C 80 10 00 3A 80 10 00 B5 01 04 04 04 04 "
        "00 08 02 00 00 00 02 00 00 00 01 00 00 00 01 00 EA 9E A7 7C"
    )
    assert decompress(blob)["q"].tolist() == [0.0, 0.5, -0.5, 0.0, 0.0, 1.0]
    t = inspect(blob).tensors[0]
    assert (inspect(blob).version, t.mode, t.bits, t.step) == (4, "ans-quads", 2, 0.5)
