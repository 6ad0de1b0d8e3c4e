"""Host memory (RSS) LocalSGD / DiLoCo hold beyond the model, blocking and overlapped.

Two gloo ranks on this machine, a model of ``--params`` float32 parameters in 1000x1000
Linear layers, the default averager (delta, ``TargetRate(1.0)``). Each rank reports its RSS
over the model's fp32 size: before LocalSGD exists (after a warm-up sync on a tiny model,
so the codec's compiled kernels are not counted), after construction, and after each of
``--syncs`` synchronisations (the last is the steady state), plus the peak (VmHWM, reset
before the first sync where the kernel allows). "Inner steps" add noise to the weights:
the inner optimizer's memory is not LocalSGD's.

    python benchmarks/local_sgd_memory.py --params 5000000 --syncs 4
    python benchmarks/local_sgd_memory.py --module /path/to/other/local_sgd.py  # compare
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    got = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            got[key] = int(value.split()[0]) * 1024
    return got["VmRSS"], got["VmHWM"]


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _local_sgd_class(module: str | None) -> Any:
    if module is None:
        from tenfold.distributed import LocalSGD

        return LocalSGD
    spec = importlib.util.spec_from_file_location("other_local_sgd", module)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.LocalSGD


def _rank(rank: int, rdzv: str, out: str, args: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=Path(rdzv).as_uri(), rank=rank, world_size=2,
        timeout=timedelta(seconds=300),
    )  # fmt: skip
    local_sgd = _local_sgd_class(args["module"])
    kw = {"overlap": True} if args["overlap"] else {}
    # warm-up: compile the codec's kernels and import torch.optim's lazy modules
    tiny = nn.Linear(64, 64)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.7, momentum=0.9, nesterov=True)
    warm = local_sgd(tiny, sync_every=1, outer_optimizer=opt, **kw)
    for _ in range(2):
        with torch.no_grad():
            tiny.weight.add_(torch.randn_like(tiny.weight) * 1e-3)
        warm.step()
    if hasattr(warm, "wait"):
        warm.wait()
    del warm, tiny, opt
    layers = max(1, round(args["params"] / 1_001_000))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(1000, 1000) for _ in range(layers)])
    n = sum(p.numel() for p in model.parameters())
    size = 4 * n
    base, _ = _rss()
    outer = (
        torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
        if args["diloco"]
        else None
    )
    sync = local_sgd(model, sync_every=2, outer_optimizer=outer, **kw)
    rows: dict[str, float | None] = {"params": n, "after_construction": (_rss()[0] - base) / size}
    peak_reset = _reset_peak()
    g = torch.Generator().manual_seed(rank)
    for i in range(args["syncs"]):
        for _ in range(2):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 1e-3)
            sync.step()
        rows[f"after_sync_{i + 1}"] = (_rss()[0] - base) / size
        if args["overlap"]:  # the sync in flight finished (not applied yet)
            sync.join()
            rows[f"after_sync_{i + 1}_joined"] = (_rss()[0] - base) / size
    if hasattr(sync, "wait"):
        sync.wait()
    rows["after_wait"] = (_rss()[0] - base) / size
    rows["peak"] = (_rss()[1] - base) / size if peak_reset else None
    Path(out, f"r{rank}.json").write_text(json.dumps(rows))
    from tenfold.distributed import destroy_process_group

    destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=int, default=5_000_000)
    p.add_argument("--syncs", type=int, default=4)
    p.add_argument("--module", default=None, help="another local_sgd.py to measure")
    p.add_argument("--variants", default="local,diloco,local-overlap,diloco-overlap")
    a = p.parse_args()
    results = {}
    for variant in a.variants.split(","):
        args = {
            "params": a.params,
            "syncs": a.syncs,
            "module": a.module,
            "diloco": variant.startswith("diloco"),
            "overlap": variant.endswith("overlap"),
        }
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_rank, args=(os.path.join(tmp, "rdzv"), tmp, args), nprocs=2, join=True)
            results[variant] = [json.loads(Path(tmp, f"r{r}.json").read_text()) for r in (0, 1)]
        print(variant, json.dumps(results[variant][0]), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
