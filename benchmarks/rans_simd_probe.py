"""rANS32x16 in C (scalar 4/8/16 lanes, AVX2, AVX-512) against tenfold's numba coder.

    flock /tmp/timing.lock .venv/bin/python benchmarks/rans_simd_probe.py   # ~40 s
    .venv/bin/python benchmarks/rans_simd_probe.py --runs 2 --values 1000000 --dists 1

Is a compiled coder worth it over numba? The C probe in ``benchmarks/rans_probe_src/``
(own code, not part of the library) times encode and decode per symbol on three
distributions: scalar C in tenfold's 4-lane layout (and 8 / 16 lanes) says what compiling
alone buys; the AVX2 / AVX-512 variants need more interleaved states (8-64) sharing one
word stream, i.e. a new wire format, and say what that would buy. Every variant's round
trip is checked (bench.c exits on the first wrong value); ``numba_baseline.py`` times the
library's kernels in the same run, and each figure is given as a ratio to them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "benchmarks" / "rans_probe_src"

#: bench.c's selection codes, in its order: scalar (novec build), then SIMD (native build)
SCALAR = ("s4b", "s4j", "s8b", "s8j", "s16b", "s16j")
SIMD = ("a2x1", "a2x2", "a2x4", "a5x1", "a5x2", "a5x4", "b5x1", "b5x2", "b5x4")
#: what the SIMD code runs on (/proc/cpuinfo spellings; Linux writes avx512_vbmi2)
SIMD_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vbmi2")
#: gcc options that let simd.h compile where -march=native lacks these features
SIMD_MFLAGS = ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vbmi2"]
BASE_FLAGS = ["-O3", "-march=native"]
NOVEC_FLAGS = ["-fno-tree-vectorize", "-fno-tree-slp-vectorize"]

_LINE = re.compile(
    r"^(?P<name>\S.*?)\s+enc\s+(?P<enc>[\d.]+) ns/sym\s+dec\s+(?P<dec>[\d.]+) ns/sym\s+"
    r"\(min (?P<emin>[\d.]+) / (?P<dmin>[\d.]+)\)\s+(?P<bits>[\d.]+) bits/sym$"
)
_HEADER = re.compile(
    r"^dist (?P<dist>\d+): K=(?P<K>\d+) n=(?P<n>\d+) entropy (?P<h>[\d.]+) bits/sym"
)
_NAME = re.compile(
    r"^(?:scalar (?P<lanes>\d+) lanes \((?P<kind>bl|br)\)|(?P<v>\w+) (?P<s>\d+) states)$"
)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def build(gcc: str, flags: list[str], exe: Path) -> None:
    cmd = [gcc, *flags, "-o", str(exe), str(PROBE / "bench.c"), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"compiling the probe failed: {' '.join(cmd)}\n{proc.stderr}")


def run_bench(exe: Path, dist: int, runs: int, values: int, codes: tuple[str, ...]) -> str:
    """bench.c's output; any failed check (it prints FAIL and exits 1) ends this script."""
    cmd = [str(exe), str(dist), str(runs), str(values), "".join(codes)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        raise SystemExit(f"{' '.join(cmd)} failed ({why}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def parse_bench(text: str, build_name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header's distribution and one record per result line (printed once its checks
    passed)."""
    dist: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        if m := _HEADER.match(line):
            dist = {
                "symbols": int(m["K"]),
                "scale_bits": int(m["n"]),
                "entropy_bits_per_symbol": float(m["h"]),
            }
        elif m := _LINE.match(line.strip()):
            name = _NAME.match(m["name"])
            if name is None:
                raise SystemExit(f"unexpected variant name in: {line!r}")
            if name["lanes"]:
                variant, states = f"scalar ({name['kind']})", int(name["lanes"])
            else:
                variant, states = name["v"], int(name["s"])
            records.append(
                {
                    "variant": variant,
                    "states": states,
                    "name": m["name"],
                    "build": build_name,
                    "encode_ns_per_symbol": float(m["enc"]),
                    "decode_ns_per_symbol": float(m["dec"]),
                    "encode_ns_per_symbol_min": float(m["emin"]),
                    "decode_ns_per_symbol_min": float(m["dmin"]),
                    "bits_per_symbol": float(m["bits"]),
                    "checks_passed": True,
                }
            )
        elif line.strip():
            raise SystemExit(f"unexpected line from bench: {line!r}")
    return dist, records


def run_numba(dist: int, runs: int, values: int) -> dict[str, Any]:
    cmd = [sys.executable, str(PROBE / "numba_baseline.py"), "--runs", str(runs)]
    cmd += ["--values", str(values), str(dist)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def numba_records(nb: dict[str, Any]) -> list[dict[str, Any]]:
    common = {
        "states": nb["lanes"],
        "build": "numba",
        "bits_per_symbol": nb["bits_per_symbol"],
        "checks_passed": nb["checks_passed"],
    }
    api = {k: nb[k] for k in nb if k.endswith(("_per_symbol", "_per_symbol_min"))}
    api.pop("bits_per_symbol")
    return [
        {"variant": "numba", "name": "tenfold.codec.ans.encode / decode", **common, **api},
        {
            "variant": "numba kernels",
            "name": "_encode_kernel / _decode_kernel",
            **common,
            **nb["kernels_only"],
            "branchless": nb["branchless"],
        },
    ]


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Numba's kernels, scalar C in tenfold's 4-lane layout, and the fastest AVX2 and
    AVX-512 variants (encode and decode chosen separately: the best state counts differ)."""
    groups = {
        "numba_kernels": lambda r: r["variant"] == "numba kernels",
        "scalar_c_4_lanes": lambda r: r["variant"].startswith("scalar") and r["states"] == 4,
        "best_avx2": lambda r: r["variant"] == "avx2",
        "best_avx512": lambda r: r["variant"].startswith("avx512"),
    }
    out: dict[str, Any] = {}
    for key, pick in groups.items():
        rows = [r for r in records if pick(r)]
        if not rows:
            continue
        entry: dict[str, Any] = {}
        for op in ("encode", "decode"):
            field = f"{op}_ns_per_symbol"
            best = min(rows, key=lambda r: float(r[field]))  # noqa: B023 - used at once
            entry[op] = {"ns_per_symbol": best[field], "name": best["name"]}
        out[key] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/rans_simd_probe.py", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--runs", type=int, default=7, help="timed runs per figure (median)")
    p.add_argument("--values", type=int, default=10_000_000, help="symbols (multiple of 64)")
    p.add_argument("--dists", default="0,1,2", help="bench.c distributions, comma-separated")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "rans_simd_probe.json",
        help="where the JSON is written",
    )
    args = p.parse_args(argv)
    dists = [int(d) for d in args.dists.split(",") if d.strip()]
    if not dists or any(d not in (0, 1, 2) for d in dists):
        p.error("--dists takes 0, 1 and/or 2")
    if args.values <= 0 or args.values % 64 or not 1 <= args.runs <= 64:
        p.error("--values must be a positive multiple of 64 and --runs 1..64")
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("gcc not found on PATH: the C probe needs gcc (apt-get install gcc)")
    flags_present = cpu_flags()
    missing = [f for f in SIMD_FEATURES if f not in flags_present]
    simd_codes = () if missing else SIMD
    native = BASE_FLAGS + (SIMD_MFLAGS if missing else [])
    novec = native + NOVEC_FLAGS
    notes = []
    if missing:
        notes.append(
            f"this CPU lacks {', '.join(missing)}: the AVX2 / AVX-512 variants are skipped; "
            f"simd.h compiles only with {' '.join(SIMD_MFLAGS)} added, so the scalar "
            "build may still use those instructions (a SIGILL would say so)"
        )
        print(f"note: {notes[-1]}", file=sys.stderr)
    gcc_version = subprocess.run(
        [gcc, "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    load_before = os.getloadavg()
    per_dist: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rans_simd_probe_") as tmp:
        exe_native, exe_novec = Path(tmp) / "bench", Path(tmp) / "bench_novec"
        build(gcc, native, exe_native)
        build(gcc, novec, exe_novec)
        for d in dists:
            load_d = os.getloadavg()
            print(f"dist {d} ...", file=sys.stderr, flush=True)
            info, records = parse_bench(
                run_bench(exe_novec, d, args.runs, args.values, SCALAR), "novec"
            )
            if simd_codes:
                _, simd = parse_bench(
                    run_bench(exe_native, d, args.runs, args.values, simd_codes), "native"
                )
                records += simd
            expected = len(SCALAR) + len(simd_codes)
            if len(records) != expected:
                raise SystemExit(f"dist {d}: {len(records)} result lines, expected {expected}")
            nb = run_numba(d, args.runs, args.values)
            records += numba_records(nb)
            ref = nb["kernels_only"]
            ratios = [
                {
                    "name": r["name"],
                    "encode": round(r["encode_ns_per_symbol"] / ref["encode_ns_per_symbol"], 3),
                    "decode": round(r["decode_ns_per_symbol"] / ref["decode_ns_per_symbol"], 3),
                }
                for r in records
            ]
            per_dist[str(d)] = {
                **info,
                "numba_bits_per_symbol": nb["bits_per_symbol"],
                "load_average_before": list(load_d),
                "load_average_after": list(os.getloadavg()),
                "records": records,
                "ratio_to_numba_kernels": ratios,
                "summary": summary(records),
            }
    report = {
        "command": [sys.executable, *sys.argv] if argv is None else ["rans_simd_probe", *argv],
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "simd_features_missing": missing,
        "gcc": gcc_version,
        "flags": {"native": native, "novec": novec},
        "builds": {
            "novec": "scalar variants (no auto-vectorisation)",
            "native": "AVX2 / AVX-512 variants",
        },
        "values": args.values,
        "runs": args.runs,
        "timing": "ns per symbol, one thread: the median of --runs runs (min also given); "
        "numba after one untimed warm-up run, bench.c without one (its median is the upper "
        "one for an even --runs)",
        "checks": "every variant decodes every value exactly and ends at its initial states "
        "with its words consumed; a failure ends the run",
        "ratio_note": "ns per symbol over numba's kernels-only ns per symbol in the same run "
        "(< 1: faster than the library's kernels)",
        "notes": notes,
        "distributions": per_dist,
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
