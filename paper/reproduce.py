"""The reproduction's command line: rerun the paper's experiments, write figures and REPORT.md.

Run from a clone, at the repository root: ``make reproduce ARGS="--profile quick --out DIR"``
(which sets up ``.venv``) or ``python -m paper --profile quick --out DIR``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PROFILE_NAMES", "build_parser", "default_out", "main", "run"]

#: How the docs, the report and sweep.json spell this command.
COMMAND = "make reproduce"

DESCRIPTION = """\
Reproduce Øland & Raj's Figures 1-5 and headline table: train every setting of a profile
(K simulated data-parallel workers per run, bit for bit the weights of torch.distributed
ranks), then draw the figures (PNG) and write REPORT.md with the paper's numbers beside
ours. The sweep is resumable: each finished run is saved as runs/<setting>__seed<k>.json
and a rerun skips it, so an interrupted sweep (Ctrl-C) continues where it stopped.

profiles:
  quick  a smoke test: 10,000 training images, 3 epochs, 2 seeds, 9 settings (<1 min)
  full   the reproduction: all of Fashion-MNIST, every setting of Figs. 1, 4, 5 and the
         init x L1 ablation, 3 seeds each, 16 epochs: 117 runs (~42-46 min on 2 idle
         cores with --jobs 2; measure this machine with --estimate first)
  beyond beyond the paper: accuracy vs bits/param for tenfold's pseudo-gradient coding
         (rate control, ANS, error feedback) against the paper's weights coding and the
         peers (fp16, bf16, int8, top-k, PowerSGD), 3 seeds, 12 epochs; shares results/
         with full (its paper settings are the same runs) and adds a section and
         figures/pareto.png to REPORT.md
"""

EPILOG = """\
examples (from the repository root; `python -m paper ARGS` is the same without make):
  make reproduce                                                # quick profile
  make reproduce ARGS="--profile full --out results --jobs 2"
  make reproduce ARGS="--profile full --estimate --jobs 2"      # predict the wall time
  make reproduce ARGS="--profile full --out results --report-only"   # redraw from saved runs
  make reproduce ARGS="--profile beyond --out results --jobs 2 --epochs 12"   # Pareto curve
  make reproduce ARGS="--profile long --out results/long --jobs 2"   # 100 epochs (about 2 h)

exit codes: 0 done, 1 some runs failed (the others are saved; rerun to retry),
2 bad option, missing data or no runs to report, 130 interrupted (finished runs are kept).
"""


def default_out(profile: str) -> Path:
    """``results`` for the full and beyond profiles, ``results/long`` for the long one (all
    committed), ``runs/reproduce-<profile>`` otherwise."""
    # beyond shares results/ with full: the paper's settings are the same run files; long's
    # runs have the same names at another length, so they live apart
    if profile == "long":
        return Path("results/long")
    return Path("results") if profile in ("full", "beyond") else Path(f"runs/reproduce-{profile}")


#: The shipped profiles (``paper.profiles.PROFILES``), spelled out so that
#: ``--help`` does not import the trainer (and torch); a test keeps them equal.
PROFILE_NAMES = ("full", "quick", "beyond", "long")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m paper`` (``make reproduce ARGS=...``)."""
    p = argparse.ArgumentParser(
        prog="python -m paper",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        default="quick",
        help="which sweep to run (default %(default)s)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="sweep directory: runs/, figures/, REPORT.md, sweep.json (default: results for "
        "--profile full and beyond, results/long for long, runs/reproduce-<profile> otherwise)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="runs trained in parallel, one process and one torch thread each (default "
        "%(default)s; 2 on a 2-core machine)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: analyse the runs already in --out, redraw figures and REPORT.md",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="measure one epoch with --jobs runs in parallel on this machine, print the "
        "predicted wall time of the runs still to do, and exit",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override the profile's epochs per run (recorded in the report)",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="a directory with the four MNIST-format IDX files instead of Fashion-MNIST's "
        "usual locations",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _err(message: str) -> None:
    print(f"reproduce: error: {message}", file=sys.stderr)


def _profile(args: argparse.Namespace) -> Any:
    from paper.profiles import get_profile

    profile = get_profile(args.profile)
    changes: dict[str, Any] = {}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.data is not None:
        changes["data_dir"] = str(Path(args.data).expanduser().resolve())
    return profile.replace(**changes) if changes else profile


def _command(args: argparse.Namespace, out: Path) -> str:
    """The canonical command line of this sweep (recorded in sweep.json and the report)."""
    parts = ["--profile", args.profile, "--out", str(out), "--jobs", str(args.jobs)]
    if args.epochs is not None:
        parts += ["--epochs", str(args.epochs)]
    if args.data is not None:
        parts += ["--data", str(args.data)]
    return f'{COMMAND} ARGS="{" ".join(shlex.quote(p) for p in parts)}"'


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def run(args: argparse.Namespace) -> int:
    """Run the parsed command line; returns the exit code."""
    from paper.report import write_report
    from paper.sweep import (
        is_finished,
        measure_epoch_seconds,
        predict_wall_seconds,
        run_sweep,
    )
    from tenfold.train.data import DatasetError, find_dataset

    if args.jobs < 1:
        _err(f"--jobs must be >= 1, got {args.jobs}")
        return 2
    if args.report_only and args.estimate:
        _err("--report-only and --estimate exclude each other")
        return 2
    try:
        profile = _profile(args)
    except ValueError as exc:
        _err(str(exc))
        return 2
    out = Path(args.out) if args.out else default_out(profile.name)
    if out.exists() and not out.is_dir():
        _err(f"--out {out} exists and is not a directory")
        return 2

    if not args.report_only:
        try:
            find_dataset(profile.dataset, profile.data_dir, download=False)
        except DatasetError as exc:
            _err(str(exc))
            return 2
        specs = profile.runs()
        todo = [s for s in specs if not is_finished(out, s)]
        print(
            f"reproduce: profile {profile.name}, {len(specs)} runs of {profile.epochs} "
            f"epochs ({len(specs) - len(todo)} already done in {out}), --jobs {args.jobs}",
            flush=True,
        )
        if args.estimate:
            print("reproduce: timing one epoch (after a warm-up epoch)...", flush=True)
            epoch_s = measure_epoch_seconds(profile, jobs=args.jobs)
            wall = predict_wall_seconds(profile, epoch_s, jobs=args.jobs, out_dir=out)
            print(
                f"  one epoch of one run, {args.jobs} running at once: {epoch_s:.2f} s\n"
                f"  runs to do: {len(todo)} x {profile.epochs} epochs -> predicted wall time "
                f"{_fmt_s(wall)} (+ ~1 min for figures and the report)",
                flush=True,
            )
            return 0
        command = _command(args, out)
        t0 = time.perf_counter()
        result = run_sweep(profile, out, jobs=args.jobs, progress=not args.quiet, command=command)
        print(
            f"reproduce: {result.ran} runs trained, {result.skipped} skipped, "
            f"{len(result.failed)} failed in {_fmt_s(time.perf_counter() - t0)}",
            flush=True,
        )
        for key, error in result.failed:
            print(f"  failed: {key}: {error}", file=sys.stderr)
    else:
        result = None

    try:
        path = write_report(out, profile)
    except ValueError as exc:
        _err(str(exc))
        return 2
    print(f"reproduce: report {path}, figures in {path.parent / 'figures'}", flush=True)
    return 1 if result is not None and result.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("reproduce: interrupted", file=sys.stderr)
        return 130
