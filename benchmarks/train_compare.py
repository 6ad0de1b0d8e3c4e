#!/usr/bin/env python3
"""char-gpt trained by K ranks over 1 Gbit/s links, every way of communicating, in one run.

Each method trains the same model (tenfold's ``char-gpt``: 4 layers, 4 heads, 128 wide,
context 128, AdamW at 1e-3) from the same initial weights on the same per-rank batches for
the same number of inner steps; only how the ranks communicate differs:

* DDP, every step: float32 all-reduce (no hook); torch's ``fp16_compress_hook``; torch's
  PowerSGD hook (rank 4, its own error feedback); tenfold's
  ``compressed_allreduce_hook`` at two rates (bits/param of the gradient).
* Local SGD / DiLoCo, ``sync_every`` in {10, 50}: float32 averaging
  (:class:`tenfold.distributed.AllReduceAverager`); tenfold's pseudo-gradient coding at two
  rates, without and with DiLoCo's outer optimizer (SGD, lr 0.7, Nesterov momentum 0.9).

Per method it reports the bytes each rank put on its link (the interface's transmit
counter inside the rank's network namespace: every header and retransmission counted), the
wall time per inner step (median over steps of the slowest rank), the validation loss
(nats/char, fixed windows of the held-out text) at a few points and at the end, and the
training loss against cumulative bytes, as JSON and a figure.

Each rank runs in its own network namespace with a 1 Gbit/s veth to a bridge (``netns.py``'s
switch; needs root), or on loopback with ``--network loopback``. The machine that made the
committed results has 2 cores for 4 ranks: compute is CPU-starved and the same for every
method, so wall time per step mostly shows compute plus what the link adds; bytes are exact.

    sudo python benchmarks/train_compare.py --out benchmarks/results/train_compare.json
    python benchmarks/train_compare.py --network loopback --steps 20 --methods ddp-fp32,local10-fp32
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netns  # noqa: E402
import sync  # noqa: E402  (its launcher, recorder and machine description)

#: Rates (bits/param) of tenfold's two settings, the default and a low one.
RATES = (1.0, 0.25)
#: Local SGD / DiLoCo synchronisation periods (inner steps).
SYNC_EVERY = (10, 50)


@dataclass(frozen=True)
class Method:
    """One way of communicating: ``kind`` ddp or local, and its settings."""

    name: str
    kind: str  # "ddp" | "local"
    comm: str  # ddp: fp32 | fp16 | powersgd | tenfold; local: fp32 | tenfold
    rate: float | None = None
    sync_every: int | None = None
    outer: bool = False  # DiLoCo's Nesterov outer optimizer


def all_methods() -> list[Method]:
    """The 15 methods of the comparison, in the order they run."""
    out = [
        Method("ddp-fp32", "ddp", "fp32"),
        Method("ddp-fp16", "ddp", "fp16"),
        Method("ddp-powersgd4", "ddp", "powersgd"),
        *(Method(f"ddp-tenfold{r:g}", "ddp", "tenfold", rate=r) for r in RATES),
    ]
    for k in SYNC_EVERY:
        out.append(Method(f"local{k}-fp32", "local", "fp32", sync_every=k))
        for r in RATES:
            out.append(Method(f"local{k}-tenfold{r:g}", "local", "tenfold", rate=r, sync_every=k))
            out.append(
                Method(
                    f"diloco{k}-tenfold{r:g}",
                    "local",
                    "tenfold",
                    rate=r,
                    sync_every=k,
                    outer=True,
                )
            )
    return out


@dataclass(frozen=True)
class WorkerConfig:
    """What every rank of one method's run needs (written as JSON next to its logs)."""

    method: dict[str, Any]
    world_size: int
    steps: int
    batch_size: int
    eval_every: int
    eval_windows: int
    seed: int
    init_method: str
    out_dir: str
    timeout_s: float


# ---- one rank ------------------------------------------------------------------------------


def worker_main(config_path: Path, rank: int) -> int:
    """One rank of one method: train ``steps`` inner steps, record per-step JSON lines."""
    import datetime

    import torch
    import torch.distributed as dist

    raw = json.loads(config_path.read_text())
    cfg = WorkerConfig(**raw)
    method = Method(**cfg.method)
    torch.set_num_threads(1)
    rec = sync._Recorder(Path(cfg.out_dir) / f"rank{rank}.jsonl")
    dist.init_process_group(
        "gloo",
        init_method=cfg.init_method,
        rank=rank,
        world_size=cfg.world_size,
        timeout=datetime.timedelta(seconds=cfg.timeout_s),
    )
    try:
        _train(cfg, method, rank, rec)
        rec("done")
    finally:
        dist.destroy_process_group()
        rec.close()
    return 0


def _train(cfg: WorkerConfig, method: Method, rank: int, rec: Any) -> None:
    import torch
    import torch.distributed as dist

    import tenfold
    from tenfold.distributed import AllReduceAverager, LocalSGD
    from tenfold.train.models import CharGPT, CharGPTConfig, configure_adamw
    from tenfold.train.recipes import CHAR_GPT_CONTEXT
    from tenfold.train.text import BatchSampler, evaluate, load_corpus, split

    corpus = load_corpus(download=False)
    train, val = split(corpus.data)
    per_rank = len(train) // cfg.world_size
    sampler = BatchSampler(
        train[rank * per_rank : (rank + 1) * per_rank],
        batch=cfg.batch_size,
        context=CHAR_GPT_CONTEXT,
        seed=cfg.seed,
        rank=rank,
    )
    shape = CharGPTConfig(vocab_size=corpus.vocab_size, context=CHAR_GPT_CONTEXT)
    model = CharGPT(shape, torch.Generator().manual_seed(cfg.seed))  # equal on every rank
    n_params = sum(p.numel() for p in model.parameters())
    net: torch.nn.Module = model
    sync_obj = None
    hook_state = None
    if method.kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # One bucket (after DDP's rebuild at the first step) for every DDP method: torch's
        # PowerSGD hook chains asynchronous all-reduces per bucket, and with several buckets
        # gloo saw them in different orders on different ranks (a collective size mismatch,
        # measured here); one bucket is also what a 0.8M-parameter model would get on GPUs.
        ddp = DDP(model, bucket_cap_mb=64)
        if method.comm == "fp16":
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
                fp16_compress_hook,
            )

            ddp.register_comm_hook(None, fp16_compress_hook)
        elif method.comm == "powersgd":
            from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

            state = powerSGD_hook.PowerSGDState(
                process_group=None, matrix_approximation_rank=4, start_powerSGD_iter=2
            )
            ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        elif method.comm == "tenfold":
            from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook

            assert method.rate is not None
            hook_state = CompressionState(tenfold.TargetRate(bits_per_param=method.rate))
            ddp.register_comm_hook(hook_state, compressed_allreduce_hook)
        net = ddp
    optimizer = configure_adamw(model, lr=1e-3)
    if method.kind == "local":
        assert method.sync_every is not None
        outer = (
            torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
            if method.outer
            else None
        )
        if method.comm == "fp32":
            sync_obj = LocalSGD(
                model,
                sync_every=method.sync_every,
                averager=AllReduceAverager(),
                outer_optimizer=outer,
            )
        else:
            assert method.rate is not None
            sync_obj = LocalSGD(
                model,
                sync_every=method.sync_every,
                policy=tenfold.TargetRate(bits_per_param=method.rate),
                outer_optimizer=outer,
            )
    ifname = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    tx0 = sync._tx_bytes(ifname) or 0
    rec("hello", rank=rank, params=n_params, ifname=ifname, pid=os.getpid())
    dist.barrier()
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        x, y = sampler.batch(step)
        _, loss = net(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats = sync_obj.step() if sync_obj is not None else None
        seconds = time.perf_counter() - t0
        tx = (sync._tx_bytes(ifname) or 0) - tx0
        record: dict[str, Any] = {
            "step": step + 1,
            "loss": float(loss.detach()),
            "seconds": seconds,
            "tx_bytes": tx,
        }
        if stats is not None:
            record["bits_per_param"] = stats.bits_per_param
        if hook_state is not None:
            record["bits_per_param"] = hook_state.stats.last_step.bits_per_param
        last = step + 1 == cfg.steps
        if rank == 0 and ((step + 1) % cfg.eval_every == 0 or last):
            # the ranks hold the same model after a sync (DDP: always); between Local SGD
            # syncs rank 0's own model is what is evaluated
            record["val_loss"] = evaluate(
                model, val, CHAR_GPT_CONTEXT, 2, batch_size=cfg.eval_windows // 2
            )
        rec("step", **record)


# ---- the orchestrator ------------------------------------------------------------------------


def _summarise(method: Method, ranks: list[list[dict[str, Any]]], steps: int) -> dict[str, Any]:
    per_rank = [[r for r in recs if r["kind"] == "step"] for recs in ranks]
    if any(len(p) != steps for p in per_rank):
        return {"error": f"incomplete: steps per rank {[len(p) for p in per_rank]}"}
    slowest = [max(p[i]["seconds"] for p in per_rank) for i in range(steps)]
    lead = per_rank[0]
    tx = [p[-1]["tx_bytes"] for p in per_rank]
    curve = [
        {"step": r["step"], "train_loss": r["loss"], "bytes_per_rank": r["tx_bytes"]} for r in lead
    ]
    vals = [{"step": r["step"], "val_loss": r["val_loss"]} for r in lead if "val_loss" in r]
    bits = [r["bits_per_param"] for r in lead if "bits_per_param" in r]
    return {
        "method": asdict(method),
        "bytes_per_rank_median": statistics.median(tx),
        "bytes_per_rank": tx,
        "seconds_per_step_median": statistics.median(slowest),
        "seconds_per_step_median_after_warmup": statistics.median(slowest[min(5, steps - 1) :]),
        "final_val_loss": vals[-1]["val_loss"] if vals else None,
        "val_loss": vals,
        "bits_per_param_median": statistics.median(bits) if bits else None,
        "curve": curve,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every selected method on the chosen network; return the report."""
    methods = [m for m in all_methods() if not args.methods or m.name in args.methods]
    from tenfold.train.text import load_corpus

    load_corpus()  # fetch and cache the text once, here; the ranks then read the cache
    if args.network == "switch":
        why = netns.netns_available()
        if why is not None:
            raise SystemExit(f"train_compare: no network namespaces ({why}); --network loopback")
        netns.cleanup_stale()
        topology = netns.build_switch(world_size=args.ranks, shape=netns.LinkShape(rate=args.rate))
    else:
        topology = netns.loopback(args.ranks)
    sync._LIVE_TOPOLOGIES.append(topology)
    atexit.register(sync._cleanup_all)
    report: dict[str, Any] = {
        "benchmark": "char-gpt, equal inner steps, every way of communicating",
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": sync._machine(),
        "network": {"name": topology.name, "description": topology.description},
        "config": {
            "ranks": args.ranks,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "context": 128,
            "link_rate": args.rate if args.network == "switch" else None,
            "eval_every": args.eval_every,
            "eval_windows": args.eval_windows,
            "seed": args.seed,
        },
        "methods": {},
    }
    try:
        with tempfile.TemporaryDirectory(prefix="tftrain-") as tmp:
            for m in methods:
                work = Path(tmp) / m.name
                work.mkdir()
                wcfg = WorkerConfig(
                    method=asdict(m),
                    world_size=args.ranks,
                    steps=args.steps,
                    batch_size=args.batch_size,
                    eval_every=args.eval_every,
                    eval_windows=args.eval_windows,
                    seed=args.seed,
                    init_method=f"file://{work / 'rendezvous'}",
                    out_dir=str(work),
                    timeout_s=args.timeout,
                )
                print(f"train_compare: {m.name} ...", file=sys.stderr, flush=True)
                t0 = time.time()
                launch = sync._launch(
                    wcfg, topology, work, time.time() + args.timeout, script=Path(__file__)
                )
                if launch.timed_out or any(c != 0 for c in launch.returncodes):
                    tail = launch.logs[0].read_text()[-2000:] if launch.logs else ""
                    report["methods"][m.name] = {
                        "error": f"exit codes {launch.returncodes}, timed out {launch.timed_out}",
                        "log_tail": tail,
                    }
                    continue
                summary = _summarise(m, sync._read_records(work, args.ranks), args.steps)
                summary["wall_seconds"] = time.time() - t0
                report["methods"][m.name] = summary
                print(
                    f"  {summary.get('bytes_per_rank_median', 0) / 1e6:.1f} MB/rank, "
                    f"{summary.get('seconds_per_step_median', 0):.3f} s/step, "
                    f"val {summary.get('final_val_loss')}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        sync._cleanup_all()
    fp32 = report["methods"].get("ddp-fp32", {}).get("bytes_per_rank_median")
    for s in report["methods"].values():
        if fp32 and s.get("bytes_per_rank_median"):
            s["bytes_vs_ddp_fp32"] = s["bytes_per_rank_median"] / fp32
    return report


def draw(report: dict[str, Any], path: Path) -> None:
    """Training loss against cumulative bytes per rank, one line per method (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for name, s in report["methods"].items():
        if "curve" not in s:
            continue
        pts = [(c["bytes_per_rank"], c["train_loss"]) for c in s["curve"] if c["bytes_per_rank"]]
        style = "-" if name.startswith("ddp") else ("--" if name.startswith("local") else ":")
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=name, linewidth=1)
        if s.get("final_val_loss") is not None:
            bx.scatter(s["bytes_per_rank_median"], s["final_val_loss"], s=18)
            bx.annotate(name, (s["bytes_per_rank_median"], s["final_val_loss"]), fontsize=6)
    ax.set(xscale="log", xlabel="bytes sent per rank (cumulative)", ylabel="training loss")
    ax.set_title("training loss vs bytes on the wire")
    bx.set(xscale="log", xlabel="bytes sent per rank (whole run)", ylabel="final val loss")
    bx.set_title("end of run: validation loss (nats/char) vs bytes")
    ax.legend(fontsize=6, ncol=2)
    for a in (ax, bx):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(report: dict[str, Any]) -> str:
    """The README's table of a report: bytes, ratio to DDP fp32, seconds/step, val loss."""
    rows = [
        "| method | MB sent per rank | vs DDP fp32 | s / inner step | final val loss (nats/char) |",
        "|---|---|---|---|---|",
    ]
    for name, s in report["methods"].items():
        if "error" in s:
            rows.append(f"| {name} | failed: {s['error']} | | | |")
            continue
        ratio = s.get("bytes_vs_ddp_fp32")
        rows.append(
            f"| {name} | {s['bytes_per_rank_median'] / 1e6:.2f} | "
            f"{'' if ratio is None else f'{1 / ratio:.0f}x less' if ratio < 1 else '1x'} | "
            f"{s['seconds_per_step_median']:.3f} | {s['final_val_loss']:.3f} |"
        )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The orchestrator's options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", choices=("switch", "loopback"), default="switch")
    p.add_argument("--rate", default="1gbit", help="link rate of the switch (tc syntax)")
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--steps", type=int, default=100, help="inner steps of every method")
    p.add_argument("--batch-size", type=int, default=8, help="windows per rank and step")
    p.add_argument("--eval-every", type=int, default=50, metavar="STEPS")
    p.add_argument("--eval-windows", type=int, default=64, help="validation windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900.0, help="per method (s)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=None, help="subset")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument(
        "--table", type=Path, default=None, metavar="JSON", help="print a report's markdown table"
    )
    p.add_argument("--worker-config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-rank", type=int, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (orchestrator, or one rank with the hidden worker options)."""
    args = build_parser().parse_args(argv)
    if args.worker_config is not None:
        return worker_main(args.worker_config, args.worker_rank)
    if args.table is not None:
        print(markdown_table(json.loads(args.table.read_text())))
        return 0
    report = run(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        draw(report, args.out.with_suffix(".png"))
    failed = [n for n, s in report["methods"].items() if "error" in s]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
