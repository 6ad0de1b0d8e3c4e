#!/usr/bin/env python3
"""Time to a target loss: char-gpt trained by K ranks over shaped links, every way of syncing.

Each method trains tenfold's ``char-gpt`` (4 layers, 4 heads, 128 wide, context 128, AdamW
1e-3) from the same initial weights on the same per-rank batches; only how the ranks
communicate differs:

* DDP every step: float32 all-reduce (no hook), torch's ``fp16_compress_hook``, torch's
  PowerSGD hook (rank 4, its error feedback), tenfold's ``compressed_allreduce_hook``
  (``TargetRate(--rate)``; asynchronous where ``CompressionState`` offers it, detected,
  else the current synchronous hook, labelled);
* every ``--sync-every`` steps: Local SGD with float32 averaging
  (``AllReduceAverager``), Local SGD and DiLoCo (outer SGD lr 0.7, Nesterov 0.9) with
  tenfold, blocking and overlapped (``LocalSGD(..., overlap=True)``, detected with
  ``inspect.signature``; "not available" otherwise), and overlapped Local SGD with the
  damped outer step ``tenfold train --overlap`` uses (outer SGD lr 0.5, no momentum).

Per link and seed, fp32 DDP runs first for ``--steps`` steps; its final validation loss is
the TARGET. Every other method runs until its validation loss (rank 0's model, every
``--eval-every`` steps, a multiple of ``--sync-every``) first reaches the target, or
``--max-factor`` x DDP's steps. Reported: the training wall time to the target (rank 0's
clock, evaluation excluded), steps, seconds per step, bytes on the rank's link, the curve.

Links (``--links``): ``loopback`` or tc rates of ``netns.py``'s switch (a shaped full-duplex
veth per rank; root). For each link, ``R = fp32 all-reduce time of the gradients /
compute time of a step`` is measured first (``calibration.json``) and printed: pick one
link near R = 1 and one with R >= 10. Ranks are pinned to cores ``r mod cores``; with more
ranks than cores they share cores (labelled CPU-shared: compute is slower and contended, the
link is not, so R is lower than with a core per rank).

Resumable: every (link, seed, method) writes ``<out-dir>/<link>/seed<k>/<method>.json``
and existing files are reused (``--force`` reruns). ``--report`` only aggregates.

    sudo python benchmarks/train_compare.py --links 1gbit,100mbit,10mbit --seeds 0,1 \\
        --out-dir benchmarks/results/train_compare --out benchmarks/results/train_compare.json
    python benchmarks/train_compare.py --quick --out-dir /tmp/tc --out /tmp/tc.json
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import inspect
import json
import math
import os
import statistics
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netns  # noqa: E402
import sync  # noqa: E402  (its launcher, recorder, core plan and machine description)

TORCH_HOOKS = ("ddp-fp16", "ddp-powersgd")
TENFOLD_METHODS = (
    "ddp-tenfold",
    "local-tenfold",
    "local-tenfold-overlap",
    "local-tenfold-overlap-damped",
    "diloco-tenfold",
    "diloco-tenfold-overlap",
    "diloco-tenfold-rs",
)
#: CompressionState arguments that would switch the hook to its asynchronous form.
_ASYNC_ARGS = ("asynchronous", "async_op", "overlap", "background", "threaded")
_FINISH_NAMES = ("wait", "finish", "flush", "synchronize")


@dataclass(frozen=True)
class Method:
    """One way of communicating: ``kind`` ddp or local, and its settings."""

    name: str
    kind: str  # "ddp" | "local"
    comm: str  # ddp: fp32 | fp16 | powersgd | tenfold; local: fp32 | tenfold
    outer: bool = False  # DiLoCo's Nesterov outer optimizer
    overlap: bool = False  # LocalSGD(..., overlap=True)
    outer_lr: float | None = None  # a damped Local SGD outer step: SGD(lr), no momentum
    collective: str | None = None  # tenfold local: CompressedAverager(collective=); None: auto


def all_methods() -> list[Method]:
    """The methods of the comparison, fp32 DDP first (its final loss is the target)."""
    return [
        Method("ddp-fp32", "ddp", "fp32"),
        Method("ddp-fp16", "ddp", "fp16"),
        Method("ddp-powersgd", "ddp", "powersgd"),
        Method("ddp-tenfold", "ddp", "tenfold"),
        Method("local-fp32", "local", "fp32"),
        Method("local-tenfold", "local", "tenfold"),
        Method("local-tenfold-overlap", "local", "tenfold", overlap=True),
        # tenfold train --overlap's default: the delayed update damped by an outer step 0.5
        Method("local-tenfold-overlap-damped", "local", "tenfold", overlap=True, outer_lr=0.5),
        Method("diloco-tenfold", "local", "tenfold", outer=True),
        Method("diloco-tenfold-overlap", "local", "tenfold", outer=True, overlap=True),
        # from 3 ranks on a slow link the reduce-scatter sends about half the bytes
        Method("diloco-tenfold-rs", "local", "tenfold", outer=True, collective="reduce-scatter"),
    ]


def overlap_available() -> bool:
    """Whether ``LocalSGD`` accepts ``overlap=`` (the background sync of issue 19)."""
    try:
        from tenfold.distributed import LocalSGD

        return "overlap" in inspect.signature(LocalSGD).parameters
    except Exception:  # not importable: reported as not available
        return False


def hook_mode() -> dict[str, Any]:
    """How tenfold's DDP hook runs here: the async argument to pass, and the label."""
    try:
        from tenfold.distributed import hooks

        params = inspect.signature(hooks.CompressionState).parameters
    except Exception as exc:  # not importable: the run will say so
        return {"kwargs": {}, "label": f"unavailable ({type(exc).__name__}: {exc})"}
    for name in _ASYNC_ARGS:
        if name in params:
            return {"kwargs": {name: True}, "label": f"async (CompressionState({name}=True))"}
    if getattr(hooks, "ASYNC", False) or getattr(
        hooks.compressed_allreduce_hook, "asynchronous", False
    ):
        return {"kwargs": {}, "label": "async (the hook's default)"}
    return {"kwargs": {}, "label": "synchronous (the current hook returns a completed future)"}


@dataclass(frozen=True)
class WorkerConfig:
    """What every rank of one launch needs (written as JSON next to its logs)."""

    mode: str  # "train" | "calibrate"
    method: dict[str, Any]
    world_size: int
    max_steps: int
    target: float | None  # stop at the first evaluation at or below it (None: never)
    batch_size: int
    eval_every: int
    eval_windows: int
    sync_every: int
    rate: float
    powersgd_start: int
    seed: int
    init_method: str
    out_dir: str
    timeout_s: float
    cpus: tuple[int, ...] = ()


# ---- one rank ------------------------------------------------------------------------------


def worker_main(config_path: Path, rank: int) -> int:
    """One rank of one launch: train (or calibrate), recording JSON lines."""
    import datetime

    raw = json.loads(config_path.read_text())
    raw["cpus"] = tuple(raw.get("cpus") or ())
    cfg = WorkerConfig(**raw)
    if cfg.cpus:
        os.sched_setaffinity(0, {cfg.cpus[rank]})
    import torch
    import torch.distributed as dist

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
        if cfg.mode == "calibrate":
            _calibrate(cfg, rank, rec)
        else:
            _train(cfg, Method(**cfg.method), rank, rec)
        rec("done")
    finally:
        with contextlib.suppress(Exception):
            from tenfold.distributed import destroy_process_group

            destroy_process_group()
        rec.close()
    return 0


def _setup(cfg: WorkerConfig, rank: int) -> tuple[Any, Any, Any, Any]:
    """(model, sampler, validation text, context) of this rank, equal weights everywhere."""
    import torch

    from tenfold.train.models import CharGPT, CharGPTConfig
    from tenfold.train.recipes import CHAR_GPT_CONTEXT
    from tenfold.train.text import BatchSampler, load_corpus, split

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
    model = CharGPT(shape, torch.Generator().manual_seed(cfg.seed))
    return model, sampler, val, CHAR_GPT_CONTEXT


def _calibrate(cfg: WorkerConfig, rank: int, rec: Any) -> None:
    """R's two terms: a step's compute (DDP under no_sync) and the fp32 all-reduce alone."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tenfold.train.models import configure_adamw

    model, sampler, _, _ = _setup(cfg, rank)
    ddp = DDP(model, bucket_cap_mb=64)
    opt = configure_adamw(model, lr=1e-3)
    n = sum(p.numel() for p in model.parameters())

    def step(i: int, sync_grads: bool) -> float:
        t0 = time.perf_counter()
        x, y = sampler.batch(i)
        ctx = contextlib.nullcontext() if sync_grads else ddp.no_sync()
        with ctx:
            _, loss = ddp(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for i in range(3):
        step(i, True)
    reps = 5
    dist.barrier()
    compute = [step(10 + i, False) for i in range(reps)]
    dist.barrier()
    ddp_steps = [step(20 + i, True) for i in range(reps)]
    buf = torch.zeros(n, dtype=torch.float32)
    comm = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        comm.append(time.perf_counter() - t0)
    rec("calibration", params=n, compute=compute, ddp_step=ddp_steps, allreduce=comm)


def _finish(sync_obj: Any) -> None:
    """Complete an overlapped sync still in flight (whatever the library names it)."""
    for name in _FINISH_NAMES:
        fn = getattr(sync_obj, name, None)
        if callable(fn):
            fn()
            return


def _train(cfg: WorkerConfig, method: Method, rank: int, rec: Any) -> None:
    import torch
    import torch.distributed as dist

    import tenfold
    from tenfold.distributed import AllReduceAverager, LocalSGD
    from tenfold.train import text
    from tenfold.train.models import configure_adamw

    # validation_loss (this round's name) or evaluate (the previous one)
    evaluate = getattr(text, "validation_loss", None) or getattr(text, "evaluate")  # noqa: B009
    model, sampler, val, context = _setup(cfg, rank)
    ctrl = dist.new_group(backend="gloo")  # stop flags never interleave with the syncs
    net: torch.nn.Module = model
    sync_obj = None
    hook_state = None
    policy = tenfold.TargetRate(bits_per_param=cfg.rate)
    if method.kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # One bucket for every DDP method: torch's PowerSGD hook chains asynchronous
        # all-reduces per bucket, and with several buckets gloo saw them in different orders
        # on different ranks (a size mismatch, measured); a 0.8M model gets one bucket anyway.
        ddp = DDP(model, bucket_cap_mb=64)
        if method.comm == "fp16":
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
                fp16_compress_hook,
            )

            ddp.register_comm_hook(None, fp16_compress_hook)
        elif method.comm == "powersgd":
            from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

            state = powerSGD_hook.PowerSGDState(
                process_group=None,
                matrix_approximation_rank=4,
                start_powerSGD_iter=cfg.powersgd_start,
            )
            ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        elif method.comm == "tenfold":
            from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook

            hook_state = CompressionState(policy, **hook_mode()["kwargs"])
            ddp.register_comm_hook(hook_state, compressed_allreduce_hook)
        net = ddp
    optimizer = configure_adamw(model, lr=1e-3)
    if method.kind == "local":
        outer: torch.optim.Optimizer | None = None
        if method.outer:
            outer = torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
        elif method.outer_lr is not None:
            outer = torch.optim.SGD(model.parameters(), lr=method.outer_lr)
        kwargs: dict[str, Any] = {"overlap": True} if method.overlap else {}
        if method.comm == "fp32":
            kwargs["averager"] = AllReduceAverager()
        elif method.collective is not None:
            from tenfold.distributed import CompressedAverager

            kwargs["averager"] = CompressedAverager(policy, collective=method.collective)
        else:
            kwargs["policy"] = policy
        sync_obj = LocalSGD(model, sync_every=cfg.sync_every, outer_optimizer=outer, **kwargs)
    ifname = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    tx0 = sync._tx_bytes(ifname) or 0
    rec("hello", rank=rank, params=sum(p.numel() for p in model.parameters()), ifname=ifname,
        pid=os.getpid(), affinity=sorted(os.sched_getaffinity(0)))  # fmt: skip
    dist.barrier()
    train_s = 0.0
    flag = torch.zeros(1, dtype=torch.int32)
    for step in range(1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        x, y = sampler.batch(step - 1)
        _, loss = net(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats = sync_obj.step() if sync_obj is not None else None
        last = step == cfg.max_steps
        if last and sync_obj is not None and method.overlap:
            _finish(sync_obj)
        seconds = time.perf_counter() - t0
        train_s += seconds
        record: dict[str, Any] = {
            "step": step,
            "loss": float(loss.detach()),
            "seconds": seconds,
            "train_seconds": train_s,
            "tx_bytes": (sync._tx_bytes(ifname) or 0) - tx0,
        }
        bits = getattr(stats, "bits_per_param", None)
        if hook_state is not None:
            bits = getattr(getattr(hook_state.stats, "last_step", None), "bits_per_param", None)
        if bits is not None:
            record["bits_per_param"] = bits
        if step % cfg.eval_every == 0 or last:
            if rank == 0:
                # the ranks hold the same model after a sync (DDP: always); between Local
                # SGD syncs rank 0's own model is what is evaluated
                record["val_loss"] = evaluate(
                    model, val, context, 2, batch_size=max(1, cfg.eval_windows // 2)
                )
                reached = cfg.target is not None and record["val_loss"] <= cfg.target
                flag.fill_(int(reached))
            if cfg.target is not None:
                dist.broadcast(flag, src=0, group=ctrl)
        rec("step", **record)
        if bool(flag.item()):
            if sync_obj is not None and method.overlap:
                _finish(sync_obj)
            rec("reached", step=step)
            break


# ---- results ---------------------------------------------------------------------------------


def summarise(
    method: Method, ranks: Sequence[Sequence[dict[str, Any]]], target: float | None
) -> dict[str, Any]:
    """One method's result file: time/steps to the target, s/step, bytes, curves."""
    per_rank = [[r for r in recs if r["kind"] == "step"] for recs in ranks]
    steps = min((len(p) for p in per_rank), default=0)
    if steps == 0:
        return {"error": "no steps recorded"}
    lead = per_rank[0][:steps]
    slowest = [max(p[i]["seconds"] for p in per_rank) for i in range(steps)]
    vals = [
        {"step": r["step"], "val_loss": r["val_loss"], "train_seconds": r["train_seconds"]}
        for r in lead
        if "val_loss" in r
    ]
    hit = next((v for v in vals if target is not None and v["val_loss"] <= target), None)
    bits = [r["bits_per_param"] for r in lead if "bits_per_param" in r]
    tx = [p[steps - 1]["tx_bytes"] for p in per_rank]
    return {
        "method": asdict(method),
        "steps": steps,
        "target": target,
        "reached": hit is not None,
        "time_to_target_s": hit["train_seconds"] if hit else None,
        "steps_to_target": hit["step"] if hit else None,
        "train_seconds": lead[-1]["train_seconds"],
        "seconds_per_step_median": statistics.median(slowest),
        "seconds_per_step_median_after_warmup": statistics.median(slowest[min(5, steps - 1) :]),
        "final_val_loss": vals[-1]["val_loss"] if vals else None,
        "val_loss": vals,
        "bytes_per_rank": tx,
        "bytes_per_rank_median": statistics.median(tx),
        "bits_per_param_median": statistics.median(bits) if bits else None,
        "train_loss": [[r["step"], r["loss"]] for r in lead],
    }


def calibration_summary(ranks: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """R = fp32 all-reduce of the gradients / compute of one step (medians, slowest rank)."""
    recs = [next(r for r in rank if r["kind"] == "calibration") for rank in ranks]
    compute = statistics.median(max(r["compute"][i] for r in recs) for i in range(5))
    comm = statistics.median(max(r["allreduce"][i] for r in recs) for i in range(5))
    ddp = statistics.median(max(r["ddp_step"][i] for r in recs) for i in range(5))
    return {
        "params": recs[0]["params"],
        "compute_s_per_step": compute,
        "fp32_allreduce_s": comm,
        "ddp_fp32_step_s": ddp,
        "R": comm / compute if compute else None,
        "R_from_ddp_step": (ddp - compute) / compute if compute else None,
        "what": "compute = a DDP step under no_sync() (forward, backward, AdamW); "
        "fp32_allreduce = dist.all_reduce of every gradient value as one float32 tensor; "
        "medians of 5 of the slowest rank. R_from_ddp_step = (DDP step - compute) / "
        "compute: what the link adds to a real step (DDP overlaps part of it)",
    }


def _link_dir(out_dir: Path, link: str) -> Path:
    return out_dir / link.replace("/", "_")


def verdicts(links: dict[str, Any]) -> dict[str, Any]:
    """Issue 19's targets from the per-link results (medians over seeds; never hard-coded)."""

    def med_time(res: dict[str, Any], name: str) -> float:
        ts = [
            s[name]["time_to_target_s"] if s.get(name, {}).get("reached") else math.inf
            for s in res["seeds"].values()
            if name in s and "error" not in s[name] and "not_available" not in s[name]
        ]
        return statistics.median(ts) if ts else math.nan

    out: dict[str, Any] = {
        "what": "R >= 10, 4 ranks: tenfold's best method reaches the target >= 5x sooner than "
        "fp32 DDP and >= 1.5x sooner than the best torch hook; R < 1: tenfold's hook costs "
        "no more time per step than fp32 DDP (medians over seeds)",
        "links": {},
    }
    for link, res in links.items():
        r = (res.get("calibration") or {}).get("R")
        entry: dict[str, Any] = {"R": r}
        times = {m.name: med_time(res, m.name) for m in all_methods()}
        entry["time_to_target_s"] = {k: (None if not math.isfinite(v) else v)
                                     for k, v in times.items()}  # fmt: skip
        best_tf = min(TENFOLD_METHODS, key=lambda m: _nan_inf(times[m]))
        best_torch = min(TORCH_HOOKS, key=lambda m: _nan_inf(times[m]))
        entry["best_tenfold"], entry["best_torch_hook"] = best_tf, best_torch
        t_tf = _nan_inf(times[best_tf])
        entry["speedup_vs_ddp_fp32"] = _nan_inf(times["ddp-fp32"]) / t_tf
        entry["speedup_vs_best_torch_hook"] = _nan_inf(times[best_torch]) / t_tf
        if r is not None and r >= 10:
            entry["target"] = "R >= 10"
            entry["met"] = bool(
                entry["speedup_vs_ddp_fp32"] >= 5 and entry["speedup_vs_best_torch_hook"] >= 1.5
            )
        elif r is not None and r < 1:
            sps = {
                name: statistics.median(
                    s[name]["seconds_per_step_median_after_warmup"]
                    for s in res["seeds"].values()
                    if "seconds_per_step_median_after_warmup" in s.get(name, {})
                )
                for name in ("ddp-fp32", "ddp-tenfold")
                if any(
                    "seconds_per_step_median_after_warmup" in s.get(name, {})
                    for s in res["seeds"].values()
                )  # fmt: skip
            }
            entry["target"] = "R < 1"
            entry["seconds_per_step"] = sps
            entry["met"] = bool(sps["ddp-tenfold"] <= sps["ddp-fp32"]) if len(sps) == 2 else None
        for key in ("speedup_vs_ddp_fp32", "speedup_vs_best_torch_hook"):
            if not math.isfinite(entry[key]):
                entry[key] = None  # a method not reaching the target: no finite ratio
        out["links"][link] = entry
    return out


def _nan_inf(x: float) -> float:
    return math.inf if math.isnan(x) else x


# ---- the orchestrator ------------------------------------------------------------------------


def _topology(link: str, ranks: int) -> netns.Topology:
    if link == "loopback":
        return netns.loopback(ranks)
    why = netns.netns_available()
    if why is not None:
        raise SystemExit(f"train_compare: no network namespaces ({why}); use --links loopback")
    netns.cleanup_stale()
    shape = sync.BenchConfig(rates=(link,)).shape_for(link)
    return netns.build_switch(world_size=ranks, shape=shape)


def _launch(
    args: argparse.Namespace,
    topology: netns.Topology,
    work: Path,
    *,
    mode: str,
    method: Method,
    seed: int,
    max_steps: int,
    target: float | None,
) -> list[list[dict[str, Any]]] | str:
    """One launch of ``args.ranks`` ranks; their records, or the error text."""
    import shutil

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    wcfg = WorkerConfig(
        mode=mode,
        method=asdict(method),
        world_size=args.ranks,
        max_steps=max_steps,
        target=target,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        eval_windows=args.eval_windows,
        sync_every=args.sync_every,
        rate=args.rate,
        powersgd_start=args.powersgd_start,
        seed=seed,
        init_method=f"file://{(work / 'rendezvous').resolve()}",  # absolute: file://rel/x names a host
        out_dir=str(work),
        timeout_s=args.timeout,
        cpus=sync.core_plan(args.ranks, not args.no_pin),
    )
    done = sync._launch(wcfg, topology, work, time.time() + args.timeout, script=Path(__file__))
    if done.timed_out or any(c != 0 for c in done.returncodes):
        tail = done.logs[0].read_text(errors="replace")[-2000:] if done.logs else ""
        return f"exit codes {done.returncodes}, timed out {done.timed_out}: {tail}"
    return sync._read_records(work, args.ranks)


def _log(msg: str) -> None:
    print(f"[train_compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_link(args: argparse.Namespace, link: str, methods: Sequence[Method]) -> None:
    """Calibrate and train every (seed, method) of one link, skipping finished files."""
    ldir = _link_dir(args.out_dir, link)
    ldir.mkdir(parents=True, exist_ok=True)
    topology = _topology(link, args.ranks)
    sync._LIVE_TOPOLOGIES.append(topology)
    try:
        cal_path = ldir / "calibration.json"
        if args.force or not cal_path.exists():
            got = _launch(args, topology, ldir / "work", mode="calibrate",
                          method=all_methods()[0], seed=args.seeds[0], max_steps=0, target=None)  # fmt: skip
            cal = {"error": got} if isinstance(got, str) else calibration_summary(got)
            cal_path.write_text(json.dumps(cal, indent=1) + "\n")
        cal = json.loads(cal_path.read_text())
        _log(f"{link}: R = {cal.get('R')} (compute {cal.get('compute_s_per_step')} s/step, "
             f"fp32 all-reduce {cal.get('fp32_allreduce_s')} s)")  # fmt: skip
        if args.calibrate_only:
            return
        for seed in args.seeds:
            sdir = ldir / f"seed{seed}"
            sdir.mkdir(exist_ok=True)
            target: float | None = None
            for m in methods:
                path = sdir / f"{m.name}.json"
                if path.exists() and not args.force:
                    res = json.loads(path.read_text())
                else:
                    res = _run_method(args, topology, sdir, m, seed, target)
                    path.write_text(json.dumps(res, indent=1) + "\n")
                if m.name == "ddp-fp32":
                    target = res.get("final_val_loss")
                    if target is None:
                        _log(f"{link} seed {seed}: fp32 DDP failed; no target, skipping the rest")
                        break
                _log(f"{link} seed {seed} {m.name}: " + _one_line(res))
    finally:
        sync._stop(sync._LIVE_PROCS)
        sync._LIVE_PROCS.clear()
        sync._LIVE_TOPOLOGIES.remove(topology)
        for err in netns.teardown(topology):
            _log(f"teardown: {err}")


def _run_method(
    args: argparse.Namespace,
    topology: netns.Topology,
    sdir: Path,
    m: Method,
    seed: int,
    target: float | None,
) -> dict[str, Any]:
    if m.overlap and not overlap_available():
        return {"method": asdict(m), "not_available": "LocalSGD has no overlap= argument"}
    first = m.name == "ddp-fp32"
    max_steps = args.steps if first else int(args.max_factor * args.steps)
    t0 = time.time()
    got = _launch(args, topology, sdir / "work", mode="train", method=m, seed=seed,
                  max_steps=max_steps, target=None if first else target)  # fmt: skip
    if isinstance(got, str):
        return {"method": asdict(m), "error": got}
    res = summarise(m, got, None if first else target)
    if first:  # the target is its own final loss: when did it first get there?
        final = res.get("final_val_loss")
        hit = next((v for v in res.get("val_loss", []) if v["val_loss"] <= final), None)
        res.update(target=final, reached=hit is not None,
                   time_to_target_s=hit["train_seconds"] if hit else None,
                   steps_to_target=hit["step"] if hit else None)  # fmt: skip
    res["max_steps"] = max_steps
    res["launch_wall_seconds"] = time.time() - t0
    if m.name == "ddp-tenfold":
        res["hook_mode"] = hook_mode()["label"]
    return res


def _one_line(res: dict[str, Any]) -> str:
    if "error" in res or "not_available" in res:
        return str(res.get("not_available") or res["error"])[:200]
    t = res.get("time_to_target_s")
    return (
        f"{res['steps']} steps, {res['seconds_per_step_median']:.3f} s/step, final val "
        f"{res['final_val_loss']:.4f}, to target: "
        + (f"{t:.1f} s ({res['steps_to_target']} steps)" if t is not None else "not reached")
    )


def build_report(args: argparse.Namespace, links: Sequence[str]) -> dict[str, Any]:
    """Aggregate every result file under ``--out-dir`` for ``links`` (no training)."""
    cores = sync._core_label(args.ranks, not args.no_pin)
    report: dict[str, Any] = {
        "benchmark": "char-gpt: time to fp32 DDP's final validation loss, every way of syncing",
        "command": " ".join(sys.argv),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": sync._machine(),
        "cores": cores,
        "config": {
            "ranks": args.ranks,
            "ddp_steps": args.steps,
            "max_factor": args.max_factor,
            "batch_size": args.batch_size,
            "context": 128,
            "eval_every": args.eval_every,
            "eval_windows": args.eval_windows,
            "sync_every": args.sync_every,
            "tenfold_rate_bits_per_param": args.rate,
            "powersgd": {
                "matrix_approximation_rank": 4,
                "start_powerSGD_iter": args.powersgd_start,
            },
            "seeds": args.seeds,
            "tenfold_hook": hook_mode()["label"],
            "overlap_available": overlap_available(),
            "time": "training wall time of rank 0's loop (evaluation and the stop-flag "
            "broadcast excluded), at the first evaluation at or below the target",
        },
        "bytes": "bytes_per_rank: the transmit counter of the rank's own veth (switch); on "
        "loopback lo is shared by every rank, so it counts all ranks' traffic",
        "links": {},
    }
    for link in links:
        ldir = _link_dir(args.out_dir, link)
        cal_path = ldir / "calibration.json"
        res: dict[str, Any] = {
            "link": link,
            "calibration": json.loads(cal_path.read_text()) if cal_path.exists() else None,
            "seeds": {},
        }
        for seed in args.seeds:
            sdir = ldir / f"seed{seed}"
            res["seeds"][str(seed)] = {
                m.name: json.loads((sdir / f"{m.name}.json").read_text())
                for m in all_methods()
                if (sdir / f"{m.name}.json").exists()
            }
        report["links"][link] = res
    report["targets"] = verdicts(report["links"])
    return report


def draw(report: dict[str, Any], path: Path) -> None:
    """Validation loss against training wall time, one panel per link (seed 0 or first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = list(report["links"])
    fig, axes = plt.subplots(1, max(1, len(links)), figsize=(6 * max(1, len(links)), 4.6))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    for ax, link in zip(axes, links, strict=False):
        res = report["links"][link]
        seeds = res["seeds"]
        if not seeds:
            continue
        first = sorted(seeds)[0]
        runs = seeds[first]
        target = None
        for name, s in runs.items():
            if not s.get("val_loss"):
                continue
            style = "-" if name.startswith("ddp") else "--" if name.startswith("local") else ":"
            xs = [v["train_seconds"] for v in s["val_loss"]]
            ax.plot(xs, [v["val_loss"] for v in s["val_loss"]], style, label=name, lw=1.2)
            target = s.get("target") if target is None else target
        if target is not None:
            ax.axhline(target, color="k", lw=0.8, alpha=0.6)
        r = (res.get("calibration") or {}).get("R")
        ax.set(xscale="log", xlabel="training wall time (s)", ylabel="validation loss (nats/char)")
        shown = f"seed {first} of {len(seeds)}"
        ax.set_title(f"{link}: R = {r:.2g}, {shown}" if r is not None else f"{link}, {shown}",
                     fontsize=10)  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    label = report["cores"]["label"]
    title = f"char-gpt, {report['config']['ranks']} ranks ({label}); line: fp32 DDP's final loss"
    fig.suptitle(textwrap.fill(title, 16 * max(1, len(links)) + 50), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(report: dict[str, Any]) -> str:
    """Per link: time to target and s/step of every method (median over seeds)."""
    rows = []
    for link, res in report["links"].items():
        r = (res.get("calibration") or {}).get("R")
        rows += [f"\n**{link}** (R = {r if r is None else f'{r:.2g}'})\n",
                 "| method | time to target (s) | steps to target | s / step | MB / rank |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for m in all_methods():
            runs = [s[m.name] for s in res["seeds"].values() if m.name in s]
            if not runs:
                continue
            if any("not_available" in x for x in runs):
                rows.append(f"| {m.name} | not available | | | |")
                continue
            ok = [x for x in runs if "error" not in x]
            if not ok:
                rows.append(f"| {m.name} | failed | | | |")
                continue
            times = [x["time_to_target_s"] for x in ok if x.get("reached")]
            t = f"{statistics.median(times):.1f}" if len(times) == len(ok) else "not reached"
            st = [x["steps_to_target"] for x in ok if x.get("reached")]
            rows.append(
                f"| {m.name} | {t} | {statistics.median(st) if st else ''} | "
                f"{statistics.median(x['seconds_per_step_median'] for x in ok):.3f} | "
                f"{statistics.median(x['bytes_per_rank_median'] for x in ok) / 1e6:.2f} |"
            )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The orchestrator's options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--links", default="1gbit,100mbit,10mbit",
                   help="comma-separated: loopback or tc rates of the switch")  # fmt: skip
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=300, help="fp32 DDP's steps (sets the target)")
    p.add_argument("--max-factor", type=float, default=3.0, help="others: up to this x steps")
    p.add_argument("--batch-size", type=int, default=8, help="windows per rank and step")
    p.add_argument("--eval-every", type=int, default=20, metavar="STEPS")
    p.add_argument("--eval-windows", type=int, default=64, help="validation windows")
    p.add_argument("--sync-every", type=int, default=10, help="Local SGD / DiLoCo period")
    p.add_argument("--rate", type=float, default=1.0, help="tenfold bits/param")
    p.add_argument("--powersgd-start", type=int, default=10, help="PowerSGD start iteration")
    p.add_argument("--timeout", type=float, default=7200.0, help="per launch (s)")
    p.add_argument("--methods", default=None, help="comma-separated subset")
    p.add_argument("--no-pin", action="store_true", help="do not pin ranks to cores")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/train_compare"))
    p.add_argument("--out", type=Path, default=None, help="the aggregated JSON (+ .png figure)")
    p.add_argument("--force", action="store_true", help="rerun even where result files exist")
    p.add_argument("--calibrate-only", action="store_true", help="only measure R per link")
    p.add_argument("--report", action="store_true", help="only aggregate existing files")
    p.add_argument("--quick", action="store_true",
                   help="loopback, 2 ranks, 4 DDP steps, 1 seed (smoke test; untimed)")  # fmt: skip
    p.add_argument("--table", type=Path, default=None, metavar="JSON",
                   help="print a report's markdown table")  # fmt: skip
    p.add_argument("--worker-config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-rank", type=int, help=argparse.SUPPRESS)
    return p


def _apply_quick(args: argparse.Namespace) -> None:
    args.links, args.ranks, args.seeds, args.steps = "loopback", 2, "0", 4
    args.max_factor, args.eval_every, args.eval_windows, args.sync_every = 2.0, 2, 4, 2
    args.powersgd_start, args.timeout = 2, 600.0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (orchestrator, or one rank with the hidden worker options)."""
    args = build_parser().parse_args(argv)
    if args.worker_config is not None:
        code = worker_main(args.worker_config, args.worker_rank)
        # A rank's records are written and closed: leave without the interpreter's
        # teardown, where gloo's and DDP's C++ threads sometimes abort the process
        # ("terminate called without an active exception", exit -6) after a clean run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if args.table is not None:
        print(markdown_table(json.loads(args.table.read_text())))
        return 0
    if args.quick:
        _apply_quick(args)
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    args.eval_every = max(1, math.ceil(args.eval_every / args.sync_every)) * args.sync_every
    links = [x.strip() for x in args.links.split(",") if x.strip()]
    wanted = set(args.methods.split(",")) if args.methods else None
    methods = [
        m for m in all_methods() if wanted is None or m.name in wanted or m.name == "ddp-fp32"
    ]
    if not args.report:
        from tenfold.train.text import load_corpus

        load_corpus()  # fetch and cache the text once, here; the ranks read the cache
        atexit.register(sync._cleanup_all)
        for link in links:
            run_link(args, link, methods)
    report = build_report(args, links)
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        draw(report, args.out.with_suffix(".png"))
    print(markdown_table(report))
    failed = [
        f"{link}/{seed}/{name}"
        for link, res in report["links"].items()
        for seed, runs in res["seeds"].items()
        for name, s in runs.items()
        if "error" in s
    ]
    if failed:
        _log(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
