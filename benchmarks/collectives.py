"""All-gather vs reduce-scatter: wall time of ``CompressedAverager.average`` on loopback.

P gloo ranks on this machine, ~4.2M float32 parameters in four tensors, delta mode,
``TargetRate(1.0)``; after ``initialize`` and one warm-up sync, the median of ``--reps``
syncs (each after a small random local step). Prints one JSON object: per collective and
P, the median seconds (rank 0's; every rank waits for the slowest anyway), and per rank
``bytes_sent`` and ``values_decoded`` of the last sync.

    .venv/bin/python benchmarks/collectives.py --world 2 3 4 --reps 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tenfold
from tenfold.distributed import CompressedAverager

SHAPES = {"a": (2048, 1024), "b": (1024, 1024), "c": (1000, 1000), "d": (1000,)}


def _job(rank: int, world: int, rdzv: str, out: str, reps: int, threads: int | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=Path(rdzv).as_uri(),
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=300),
    )
    try:
        g = torch.Generator().manual_seed(rank)
        result = {}
        for collective in ("all-gather", "reduce-scatter"):
            named = [(n, torch.randn(s, generator=g) * 0.05) for n, s in SHAPES.items()]
            avg = CompressedAverager(
                tenfold.TargetRate(bits_per_param=1.0), collective=collective, threads=threads
            )
            avg.initialize(named)
            seconds, parts = [], []
            for _rep in range(reps + 1):
                with torch.no_grad():
                    for _, t in named:
                        t.add_(torch.randn(t.shape, generator=g) * 1e-3)
                dist.barrier()
                t0 = time.perf_counter()
                stats = avg.average(named)
                seconds.append(time.perf_counter() - t0)
                parts.append((stats.encode_seconds, stats.comm_seconds, stats.decode_seconds))
            result[collective] = {
                "median_seconds": statistics.median(seconds[1:]),  # the first: warm-up
                "encode_comm_decode": [statistics.median(p) for p in zip(*parts[1:], strict=True)],
                "bytes_sent": stats.bytes_sent,
                "values_decoded": stats.values_decoded,
                "values_encoded": stats.values_encoded,
                "bits_per_param": stats.bits_per_param,
            }
        Path(out, f"r{rank}.json").write_text(json.dumps(result))
    finally:
        tenfold.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="codec threads per rank")
    args = parser.parse_args()
    report: dict[str, object] = {
        "num_values": sum(int(torch.Size(s).numel()) for s in SHAPES.values()),
        "threads": args.threads,
    }
    for world in args.world:
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(
                _job,
                args=(world, str(Path(tmp, "rdzv")), tmp, args.reps, args.threads),
                nprocs=world,
                join=True,
            )
            ranks = [json.loads(Path(tmp, f"r{r}.json").read_text()) for r in range(world)]
        report[f"P={world}"] = {
            c: {
                "median_seconds_rank0": round(ranks[0][c]["median_seconds"], 4),
                "median_seconds_max_rank": round(max(r[c]["median_seconds"] for r in ranks), 4),
                "bytes_sent": [r[c]["bytes_sent"] for r in ranks],
                "values_decoded": [r[c]["values_decoded"] for r in ranks],
                "values_encoded": [r[c]["values_encoded"] for r in ranks],
                "bits_per_param": round(ranks[0][c]["bits_per_param"], 3),
                "encode_comm_decode_rank0": [
                    round(x, 4) for x in ranks[0][c]["encode_comm_decode"]
                ],
            }
            for c in ("all-gather", "reduce-scatter")
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
