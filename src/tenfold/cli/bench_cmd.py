"""``tenfold bench``: the codec's speed on a model's tensors, beside zstd-3 and a copy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "format_report", "run"]

DESCRIPTION = """\
Time tenfold's compress and decompress (TargetRate at 0.25, 1 and 4 bits/param, one thread)
on a model's full tensor set, beside a plain numpy copy, zstd level 3, constriction's ANS
coder and, where installed, zfp and SZ3, all in one process and one run: the ratios hold on
a busy machine where absolute speeds do not. Also: the speed-up of --threads threads, peak
memory, and bits/param against relative RMSE (error = decoded - original).

The default data is the pseudo-gradient an averager hands the codec: a 6-layer, 384-wide
CharGPT (76 tensors, 10.7M values) after 8 AdamW steps on random tokens, cached in
--cache. Speeds are M values/s (float32 values in or out), the median of --reps runs.
Run it with nothing else running; the load average is reported.
"""

EPILOG = """\
examples:
  tenfold bench                                   # ~15-20 s on 2 shared cores
  tenfold bench --quick --data synthetic          # a smoke run, ~2-5 s
  tenfold bench --data my_delta.npz --json > r.json   # your own float arrays (numpy.savez)
times depend on the machine; the first default run also builds and caches the char-gpt data.

needs: pip install 'tenfold[bench]' (torch for the char-gpt data, zstandard, constriction);
zfpy and pysz are measured when installed.
exit codes: 0 done, 2 bad option or unreadable data, 130 interrupted.
"""


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rates takes comma-separated bits/param such as 0.25,1,4; got {text!r}"
        ) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tenfold bench``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="time the codec on a model's tensors beside zstd-3 and a numpy copy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", default="char-gpt", metavar="SOURCE",
        help="char-gpt (default), synthetic (Student-t, same shapes, no torch), synthetic-one-scale "
        "(the same, every tensor at one scale) or an .npz file",
    )  # fmt: skip
    p.add_argument(
        "--rates", type=_rates, default=(0.25, 1.0, 4.0), metavar="R,R,...",
        help="TargetRate bits/param to time (default 0.25,1,4)",
    )  # fmt: skip
    p.add_argument("--reps", type=int, default=0, help="timed runs per figure (default 5)")
    p.add_argument(
        "--threads", type=int, default=2,
        help="also time this many threads at 1 bit/param against one (default 2; 1: skip)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a small model, 2 reps, short sweep")
    p.add_argument("--no-rd", action="store_true", help="skip the rate-distortion sweep")
    p.add_argument("--json", action="store_true", help="print the JSON instead of a table")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    p.add_argument(
        "--cache", type=Path, default=Path("~/.cache/tenfold/bench"),
        help="where the char-gpt data is kept (default ~/.cache/tenfold/bench)",
    )  # fmt: skip
    p.add_argument("--no-cache", action="store_true", help="regenerate the data, keep nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _f(value: float) -> str:
    return f"{value:.4g}"


def format_report(result: dict[str, Any]) -> str:
    """A readable summary of :func:`tenfold.bench.run_codec_bench`'s result."""
    load = " ".join(f"{x:.2f}" for x in result["load_average_before"])
    lines = [
        f"data: {result['data']}",
        f"{result['tensors']} tensors, {result['values'] / 1e6:.2f}M values, median of "
        f"{result['reps']} run{'s' if result['reps'] != 1 else ''}, one thread; load average before: {load}",
        "",
        f"{'':24}{'bits/param':>11}{'rel.RMSE':>10}{'compress':>10}{'decompress':>12}"
        f"{'vs zstd-3':>17}",
        f"{'':24}{'':>11}{'':>10}{'M val/s':>10}{'M val/s':>12}",
    ]
    single = result["single_thread"]
    ratios = result.get("ratio_to_zstd3", {})

    def row(name: str, r: dict[str, Any] | None, err: str = "0", ratio: str = "") -> None:
        if r is None:
            lines.append(f"{name:24}  not installed")
            return
        lines.append(
            f"{name:24}{_f(r['bits_per_param']):>11}{err:>10}{_f(r['compress_Mvps']):>10}"
            f"{_f(r['decompress_Mvps']):>12}{ratio:>17}"
        )

    row("numpy copy", single["copy"])
    row("zstd-3", single["zstd3"], ratio="1x" if single["zstd3"] else "")
    for rate, r in single["tenfold"].items():
        q = ratios.get(rate)
        text = f"{q['compress']:.2f}x / {q['decompress']:.2f}x" if q else ""
        row(f"tenfold TargetRate({float(rate):g})", r, _f(r["rel_rmse"]), text)
    if result.get("constriction") is not None:
        row("constriction (coder only)", result["constriction"], "-")
    lines.append("\ninto existing arrays (decompress(out=...); no fresh memory to fault in):")
    lines.append(f"  {'numpy copy':22}{_f(single['copy']['copy_into_Mvps']):>10} M val/s")
    for rate, r in single["tenfold"].items():
        q = ratios.get(rate)
        text = f"  ({q['decompress_into']:.2f}x zstd-3's decompress)" if q else ""
        lines.append(
            f"  {'TargetRate(' + format(float(rate), 'g') + ')':22}"
            f"{_f(r['decompress_into_Mvps']):>10} M val/s{text}"
        )
    for key, value in result.items():
        if key.startswith("threads") and key.endswith("_over_1_at_rate_1"):
            n = key[len("threads") : -len("_over_1_at_rate_1")]
            lines.append(
                f"\n{n} threads over 1 at 1 bit/param ({value['pairs']} interleaved pairs): "
                f"compress {value['compress']:.2f}x, decompress {value['decompress']:.2f}x, "
                f"into existing arrays {value['decompress_into']:.2f}x"
            )
            machine = result.get(f"machine_threads{n}_over_1")
            if machine:
                lines.append(
                    f"  this machine, {n} threads over 1 without the GIL: compute "
                    f"{machine['compute']:.2f}x, memory reads {machine['memory']:.2f}x "
                    f"({machine['read_GBps_one_thread']:g} GB/s with one thread)"
                )
    mem = result["memory"]
    lines.append(
        f"peak extra memory: compress {mem['compress_peak_extra_over_input']:.2f}x the input, "
        f"decompress {mem['decompress_peak_extra_over_output']:.2f}x beyond the output"
    )
    rd = result.get("rate_distortion")
    if rd:
        lines.append("\nrate-distortion (bits/param -> relative RMSE):")
        for name, key in (("tenfold", "tenfold"), ("zfp", "zfp_fixed_rate"), ("SZ3", "sz3_abs")):
            rows = rd.get(key)
            pts = (
                "  ".join(f"{_f(p['bits_per_param'])}->{_f(p['rel_rmse'])}" for p in rows)
                if rows
                else "not installed"
            )
            lines.append(f"  {name:8}{pts}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table (or JSON); 2 on a bad option or unreadable data."""
    from tenfold.bench import CodecBenchConfig, run_codec_bench
    from tenfold.errors import ConfigError

    try:
        config = CodecBenchConfig(
            data=args.data,
            rates=args.rates,
            reps=args.reps,
            threads=args.threads,
            quick=args.quick,
            rate_distortion=not args.no_rd,
            cache=None if args.no_cache else args.cache.expanduser(),
        )
        progress = None if args.quiet else lambda line: print(f"... {line}", file=sys.stderr)
        result = run_codec_bench(config, progress)
    except ConfigError as exc:
        print(f"tenfold bench: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text if args.json else format_report(result))
    return 0
