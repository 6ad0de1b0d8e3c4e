#!/usr/bin/env python3
"""Host memory of tenfold's synchronisers: peak and steady RSS over the model's fp32 size.

One launch of P gloo ranks (loopback) per variant, each rank a fresh process:

* ``averager`` - a bare ``CompressedAverager(TargetRate(1.0), transmit="delta")``;
* ``localsgd``  - ``LocalSGD(model, sync_every=1, policy=TargetRate(1.0))``;
* ``diloco``    - the same with an outer ``SGD(lr=0.7, momentum=0.9, nesterov=True)``;
* ``localsgd_overlap`` / ``diloco_overlap`` - with ``overlap=True``, only where
  ``LocalSGD`` accepts it (checked with ``inspect.signature``).

Per rank: the model (sync.py's synthetic tensors) and a per-rank drift are made; a warm-up
builds the variant on that model, syncs twice and drops it (numba compiles the kernels this
layout's chunks take, which a tiny model does not; the residual's path runs; the
allocator's per-thread pools exist): ``warmup_fixed`` = the RSS it leaves after ``trim``,
a one-off cost of the process, not of the model. Then ``base`` = RSS. The variant is built
(``built``), then each of ``syncs`` rounds adds the drift in place and syncs; before each
round the kernel's peak counter is reset (``/proc/self/clear_refs`` 5), after it
``VmHWM`` is the round's ``peak`` and ``VmRSS`` its ``after``. Reported over ``4 n`` bytes
(the model in float32): steady = after the last round minus base; peak = max round peak
minus base; transient = peak - steady. ``steady_trimmed`` is after ``gc.collect()`` and
glibc ``malloc_trim(0)`` (memory freed but still held by the allocator is not the
library's; ``malloc_trim`` cannot shrink a thread's arena, so some stays); ``steady_live``
counts only the bytes glibc has handed out and not had back (``mallinfo2``: live
``malloc``/``calloc`` blocks, the allocator's free memory excluded). ``transient_trimmed``:
one more round, started from a trimmed heap, its peak over its start (what the sync itself
allocates; the rounds' ``transient`` is over memory that earlier syncs freed and glibc
kept). DiLoCo's outer optimizer's own state (momentum) is reported on its own, since the
target excludes it.

With several sizes (``--size 25M,50M``) each variant is also fitted as ``extra bytes =
fixed + x * 4 n`` (least squares over the sizes): ``x`` is what grows with the model, and
``fixed`` (MB) what does not (a falling ratio over sizes is a fixed cost).

    python benchmarks/sync_memory.py --size 25M,50M --out /tmp/memory.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import inspect
import json
import os
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: syncs of the warm-up (two: the first sync has no residual yet, the second does)
WARMUP_SYNCS = 2
VARIANTS = ("averager", "localsgd", "diloco", "localsgd_overlap", "diloco_overlap")
TARGETS: dict[str, Any] = {
    "what": "issue 19: steady extra <= 2.0x the model (LocalSGD), <= 3.0x (DiLoCo, plus the "
    "outer optimizer's own state); a sync's transient on top <= 0.5x",
    "localsgd": {"steady": 2.0, "transient": 0.5},
    "diloco": {"steady": 3.0, "transient": 0.5},
}


@dataclass(frozen=True)
class MemoryWorkerConfig:
    """What each rank of one variant's launch reads."""

    variant: str
    world_size: int
    size: int
    layout: str
    syncs: int
    seed: int
    init_method: str
    out_dir: str
    timeout_s: float


def overlap_supported() -> bool:
    """Whether ``tenfold.distributed.LocalSGD`` accepts ``overlap=`` (the overlapped sync)."""
    try:
        from tenfold.distributed import LocalSGD

        return "overlap" in inspect.signature(LocalSGD).parameters
    except Exception:  # not importable: the variants are reported as not available
        return False


# ---- reading this process's memory --------------------------------------------------------


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def rss_bytes() -> int:
    """Resident set size of this process (bytes)."""
    return (_status_kib("VmRSS") or 0) * 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_bytes() -> int:
    """VmHWM: the peak RSS since the last :func:`reset_peak` (bytes)."""
    return (_status_kib("VmHWM") or 0) * 1024


#: glibc's ``struct mallinfo2``, in order (every field a size_t)
_MALLINFO2_FIELDS = (
    "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
    "fordblks", "keepcost",
)  # fmt: skip


def live_heap_bytes() -> int | None:
    """Bytes glibc's allocator has handed out and not had back (``mallinfo2``: in-use
    arena blocks plus mmapped blocks); None without glibc >= 2.33."""

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in _MALLINFO2_FIELDS]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    info = fn()
    return int(info.uordblks + info.hblkhd)


def trim() -> None:
    """gc, then hand freed heap back to the OS (glibc ``malloc_trim``; no-op elsewhere)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---- one rank -----------------------------------------------------------------------------


def _module(named: Sequence[tuple[str, Any]]) -> Any:
    """An nn.Module whose parameters are ``named`` (dots in names become underscores)."""
    import torch

    model = torch.nn.Module()
    for name, w in named:
        model.register_parameter(name.replace(".", "_"), torch.nn.Parameter(torch.from_numpy(w)))
    return model


def _build(variant: str, model: Any) -> tuple[Callable[[], Any], Any, Any]:
    """(one sync, the outer optimizer or None, the synchroniser) of ``variant`` over
    ``model``."""
    import torch

    import tenfold
    from tenfold.distributed import CompressedAverager, LocalSGD

    policy = tenfold.TargetRate(bits_per_param=1.0)
    if variant == "averager":
        avg = CompressedAverager(policy, transmit="delta")
        named = list(model.named_parameters())
        avg.initialize([(n, p.detach()) for n, p in named])
        return (lambda: avg.average([(n, p.detach()) for n, p in named])), None, avg
    outer = None
    if variant.startswith("diloco"):
        outer = torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
    kwargs: dict[str, Any] = {"overlap": True} if variant.endswith("_overlap") else {}
    sync = LocalSGD(model, sync_every=1, policy=policy, outer_optimizer=outer, **kwargs)

    def step() -> Any:
        out = sync.step()
        if kwargs:  # the overlapped sync runs behind: measure it to its end
            for name in ("wait", "finish", "flush", "synchronize"):
                fn = getattr(sync, name, None)
                if callable(fn):
                    fn()
                    break
        return out

    return step, outer, sync


def _optimizer_state_bytes(opt: Any) -> int:
    total = 0
    for st in getattr(opt, "state", {}).values():
        for v in st.values():
            if hasattr(v, "numel") and hasattr(v, "element_size"):
                total += v.numel() * v.element_size()
    return total


def worker_main(config_path: Path, rank: int) -> int:
    """One rank: build, sync ``syncs`` times, write one JSON line of measurements."""
    import datetime

    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sync as bench

    cfg = MemoryWorkerConfig(**json.loads(config_path.read_text()))
    torch.set_num_threads(1)
    rec = bench._Recorder(Path(cfg.out_dir) / f"rank{rank}.jsonl")
    dist.init_process_group(
        "gloo",
        init_method=cfg.init_method,
        rank=rank,
        world_size=cfg.world_size,
        timeout=datetime.timedelta(seconds=cfg.timeout_s),
    )
    try:
        shared = bench.make_weights(cfg.size, rank=0, seed=cfg.seed, drift=False, layout=cfg.layout)
        own = bench.make_weights(cfg.size, rank=rank, seed=cfg.seed, layout=cfg.layout)
        drift = [torch.from_numpy(o - s) for (_, o), (_, s) in zip(own, shared, strict=True)]
        del own
        model = _module(shared)
        n = sum(p.numel() for p in model.parameters())

        def drift_round() -> None:
            with torch.no_grad():
                for p, d in zip(model.parameters(), drift, strict=True):
                    p.add_(d)
            dist.barrier()

        trim()
        before_warmup = rss_bytes()
        # numba's compiled code, the allocator's pools: the process's, not the model's
        warm, warm_outer, warm_sync = _build(cfg.variant, model)
        for _ in range(WARMUP_SYNCS):
            drift_round()
            warm()
        released = weakref.ref(warm_sync)
        del warm, warm_outer, warm_sync
        trim()
        base = rss_bytes()
        live_base = live_heap_bytes()
        step, outer, _ = _build(cfg.variant, model)
        trim()
        built = rss_bytes()
        rounds = []
        for _ in range(cfg.syncs):
            drift_round()
            ok = reset_peak()
            t0 = time.perf_counter()
            step()
            seconds = time.perf_counter() - t0
            rounds.append(
                {"peak": peak_bytes() if ok else None, "after": rss_bytes(), "seconds": seconds}
            )
        trim()
        live = live_heap_bytes()
        steady_trimmed = rss_bytes()
        # one more round from a trimmed heap: its peak over where it started is the sync's
        # own transient (the rounds above peak over memory earlier syncs freed and glibc kept)
        drift_round()
        trim()
        start = rss_bytes()
        ok = reset_peak()
        step()
        transient_trimmed = (peak_bytes() - start) if ok else None
        rec(
            "memory",
            rank=rank,
            variant=cfg.variant,
            num_params=n,
            model_bytes=4 * n,
            warmup_fixed=base - before_warmup,
            warmup_released=released() is None,
            base=base,
            built=built,
            rounds=rounds,
            steady_trimmed=steady_trimmed,
            transient_trimmed=transient_trimmed,
            steady_live=None if live is None or live_base is None else live - live_base,
            peak_counter=all(r["peak"] is not None for r in rounds),
            outer_optimizer_state_bytes=_optimizer_state_bytes(outer) if outer else 0,
        )
        rec("done")
    finally:
        with contextlib.suppress(Exception):
            from tenfold.distributed import destroy_process_group

            destroy_process_group()
        rec.close()
    return 0


# ---- summary ------------------------------------------------------------------------------


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, the ratios over the model's fp32 size (max over ranks)."""

    def x(value: float, r: dict[str, Any]) -> float:
        return value / r["model_bytes"]

    per_rank: list[dict[str, Any]] = []
    for r in records:
        rounds = r["rounds"]
        peaks = [q["peak"] for q in rounds if q["peak"] is not None]
        steady = rounds[-1]["after"] - r["base"]
        peak = (max(peaks) - r["base"]) if peaks else None
        per_rank.append(
            {
                "warmup_fixed_mb": r.get("warmup_fixed", 0) / 1e6,
                "warmup_released": r.get("warmup_released"),
                "built_x": x(r["built"] - r["base"], r),
                "steady_x": x(steady, r),
                "steady_trimmed_x": x(r["steady_trimmed"] - r["base"], r),
                "steady_live_x": (None if r.get("steady_live") is None else x(r["steady_live"], r)),
                "peak_x": None if peak is None else x(peak, r),
                "transient_x": None if peak is None else x(peak - steady, r),
                "transient_trimmed_x": (
                    None if r.get("transient_trimmed") is None else x(r["transient_trimmed"], r)
                ),
                "after_each_sync_x": [x(q["after"] - r["base"], r) for q in rounds],
                "peak_each_sync_x": [
                    None if q["peak"] is None else x(q["peak"] - r["base"], r) for q in rounds
                ],
                "outer_optimizer_state_x": x(r["outer_optimizer_state_bytes"], r),
                "sync_seconds": [q["seconds"] for q in rounds],
            }
        )

    def worst(key: str) -> float | None:
        vals = [float(p[key]) for p in per_rank if p[key] is not None]
        return max(vals) if vals else None

    return {
        "num_params": records[0]["num_params"],
        "model_bytes": records[0]["model_bytes"],
        "steady_x": worst("steady_x"),
        "steady_trimmed_x": worst("steady_trimmed_x"),
        "steady_live_x": worst("steady_live_x"),
        "warmup_fixed_mb": worst("warmup_fixed_mb"),
        "peak_x": worst("peak_x"),
        "transient_x": worst("transient_x"),
        "transient_trimmed_x": worst("transient_trimmed_x"),
        "outer_optimizer_state_x": worst("outer_optimizer_state_x"),
        "per_rank": per_rank,
    }


def verdicts(variants: dict[str, Any]) -> dict[str, Any]:
    """Met/missed against the issue's targets (steady_trimmed, outer state excluded; the
    transient from a trimmed heap, ``transient_trimmed_x``, where measured)."""
    out: dict[str, Any] = {"what": TARGETS["what"]}
    for name in ("localsgd", "diloco"):
        v = variants.get(name)
        if not v or "steady_x" not in v:
            continue
        steady = v["steady_trimmed_x"] - (v["outer_optimizer_state_x"] or 0.0)
        transient = v.get("transient_trimmed_x")
        if transient is None:
            transient = v["transient_x"]
        want = TARGETS[name]
        out[name] = {
            "steady_extra_x_without_outer_state": steady,
            "transient_x": transient,
            "met": steady <= want["steady"]
            and transient is not None
            and transient <= want["transient"],
            "thresholds": want,
        }
    return out


def measure(
    *,
    launch: Callable[..., Any],
    read: Callable[[Path, int], list[list[dict[str, Any]]]],
    topology: Any,
    size: int,
    layout: str,
    syncs: int = 3,
    seed: int = 0,
    variants: Sequence[str] = VARIANTS,
    timeout_s: float = 600.0,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Run every variant (one launch each over ``topology``); return the report section.

    ``launch`` and ``read`` are sync.py's ``_launch`` and ``_read_records``.
    """
    have_overlap = overlap_supported()
    world = len(topology.placements)
    out: dict[str, Any] = {
        "what": __doc__.split("\n\n")[1] if __doc__ else "",
        "world_size": world,
        "network": topology.name,
        "size": size,
        "layout": layout,
        "syncs": syncs,
        "policy": "TargetRate(bits_per_param=1.0), transmit=delta",
        # glibc's tunables change what RSS shows (a freed temporary kept or returned)
        "malloc_environment": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "command": " ".join(sys.argv),
        "load_average_before": list(os.getloadavg()),
        "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="tfmem-") as tmp:
        for variant in variants:
            if variant.endswith("_overlap") and not have_overlap:
                out["variants"][variant] = {"not_available": "LocalSGD has no overlap= argument"}
                continue
            work = Path(tmp) / variant
            work.mkdir()
            wcfg = MemoryWorkerConfig(
                variant=variant,
                world_size=world,
                size=size,
                layout=layout,
                syncs=syncs,
                seed=seed,
                init_method=f"file://{work / 'rendezvous'}",
                out_dir=str(work),
                timeout_s=timeout_s,
            )
            log(f"memory: {variant}")
            done = launch(wcfg, topology, work, time.time() + timeout_s, script=Path(__file__))
            recs = [
                next((r for r in rank if r["kind"] == "memory"), None) for rank in read(work, world)
            ]
            if done.timed_out or any(c != 0 for c in done.returncodes) or not all(recs):
                tail = done.logs[0].read_text(errors="replace")[-2000:] if done.logs else ""
                out["variants"][variant] = {"error": f"exit codes {done.returncodes}: {tail}"}
                continue
            out["variants"][variant] = summarise([r for r in recs if r])
    out["targets"] = verdicts(out["variants"])
    return out


def fit_sizes(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and measure, ``extra = fixed + x * model_bytes`` fitted over the sizes
    (least squares): ``x`` grows with the model, ``fixed_mb`` does not. Needs >= 2 sizes."""
    out: dict[str, Any] = {
        "what": "extra bytes = fixed + x * (4 n), least squares over the sizes; x: what grows "
        "with the model (compare with the targets), fixed_mb: what does not"
    }
    names = {v for r in reports for v in r["variants"]}
    for name in sorted(names):
        got = [r["variants"].get(name, {}) for r in reports]
        if any("model_bytes" not in v for v in got):
            continue
        fits: dict[str, Any] = {}
        for key in ("steady_trimmed_x", "steady_live_x", "steady_x"):
            pts = [(v["model_bytes"], v[key] * v["model_bytes"]) for v in got if v.get(key)]
            if len({m for m, _ in pts}) < 2:
                continue
            k = len(pts)
            mx = sum(m for m, _ in pts) / k
            my = sum(e for _, e in pts) / k
            slope = sum((m - mx) * (e - my) for m, e in pts) / sum((m - mx) ** 2 for m, _ in pts)
            fits[key] = {"x": slope, "fixed_mb": (my - slope * mx) / 1e6}
        fits["outer_optimizer_state_x"] = max(v["outer_optimizer_state_x"] or 0.0 for v in got)
        fits["warmup_fixed_mb"] = [v.get("warmup_fixed_mb") for v in got]
        out[name] = fits
    # RSS after malloc_trim still holds what glibc could not return (a thread arena's
    # top, fragments): tens of MB that vary from run to run, so the slope of two sizes
    # wanders by tenths; the live bytes do not. Both are judged, to the hundredth (the
    # live slope carries glibc's block headers and page rounding: ~0.1%).
    verdict: dict[str, Any] = {}
    for name in ("localsgd", "diloco"):
        for key in ("steady_live_x", "steady_trimmed_x"):
            f = out.get(name, {}).get(key)
            if f is not None:
                x = f["x"] - out[name]["outer_optimizer_state_x"]
                want = TARGETS[name]["steady"]
                verdict.setdefault(name, {})[key] = {
                    "model_sized_x_without_outer_state": x,
                    "met": round(x, 2) <= want,
                }
    out["targets"] = verdict
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone run on loopback (or one rank of a launch, with the hidden options)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument(
        "--size", default="25M", help="parameters (e.g. 25M, 100k), or several: 25M,50M (fit)"
    )
    p.add_argument("--layout", default="transformer")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--syncs", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", type=Path)
    p.add_argument("--worker-config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_config is not None:
        return worker_main(args.worker_config, args.worker_rank)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import netns
    import sync as bench

    labels = [x for x in args.size.split(",") if x]
    reports = [
        measure(
            launch=bench._launch,
            read=bench._read_records,
            topology=netns.loopback(args.world_size),
            size=bench._parse_size(label),
            layout=args.layout,
            syncs=args.syncs,
            variants=[v for v in args.variants.split(",") if v],
            log=bench._log,
        )
        for label in labels
    ]
    report: dict[str, Any] = reports[0]
    if len(reports) > 1:
        report = {"sizes": dict(zip(labels, reports, strict=True)), "fit": fit_sizes(reports)}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = all("error" not in v for r in reports for v in r["variants"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
