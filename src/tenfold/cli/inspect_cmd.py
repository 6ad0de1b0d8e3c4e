"""``tenfold inspect PACKET_FILE``: what a packet holds, tensor by tensor."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "format_table", "run"]

DESCRIPTION = """\
Validate a tenfold packet (checksum and every header field) and print, per tensor: name,
shape, dtype, coding mode, N (bits per quantized value), w_min, w_max, the entropy estimate
H that chose N, bytes in the packet and bits/param. Payloads are not decoded.
"""

EPILOG = """\
examples:
  tenfold inspect packet.bin
  tenfold inspect packet.bin --json | jq .bits_per_param

exit codes: 0 valid packet, 2 unreadable file or corrupt packet (the reason is printed).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tenfold inspect``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "inspect",
        help="describe a packet file (per-tensor N, range, bytes)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("packet", type=Path, metavar="PACKET_FILE", help="a file holding one packet")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def format_table(info: Any) -> str:
    """A fixed-width table of a :class:`~tenfold.codec.PacketInfo`, with a total line."""
    header = (
        "name", "shape", "dtype", "mode", "N", "w_min", "w_max", "step", "clamped", "H", "bytes",
        "bits/param",
    )  # fmt: skip
    rows = [
        (
            t.name,
            "x".join(str(d) for d in t.shape) or "()",
            t.dtype,
            t.mode,
            str(t.bits),
            _num(t.w_min),
            _num(t.w_max),
            _num(t.step),
            str(t.clamped) if t.step is not None else "-",
            _num(t.entropy),
            str(t.nbytes),
            _num(t.bits_per_param),
        )
        for t in info.tensors
    ]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"packet: format v{info.version}, {len(info.tensors)} tensors, {info.num_values} values, "
        f"{info.nbytes} bytes ({info.overhead_nbytes} header+CRC), "
        f"{_num(info.bits_per_param)} bits/param"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the packet's description; 2 if the file is unreadable or not a valid packet."""
    from tenfold.codec import CorruptPacketError, inspect

    try:
        blob = args.packet.read_bytes()
    except OSError as exc:
        print(f"tenfold inspect: cannot read {args.packet}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        info = inspect(blob)
    except CorruptPacketError as exc:
        print(f"tenfold inspect: {args.packet} is not a valid packet: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info.as_dict(), indent=2))
    else:
        print(format_table(info))
    return 0
