"""Which outer steps survive overlapped LocalSGD's one-round delay: char-gpt, loss per round.

    .venv/bin/python benchmarks/overlap_outer.py --out-dir benchmarks/results/overlap_outer_runs \\
        --out benchmarks/results/overlap_outer.json          # 10 runs, ~12 min on 2 cores

Each run is ``tenfold train --model char-gpt --steps 300 --simulate --workers 2 --seed S
--eval-every 1`` (deltas at 1 bit/param, a sync every 50 steps) with its outer optimizer
replaced by ``torch.optim.SGD(lr, momentum, nesterov=momentum > 0)`` (DiLoCo's outer step;
the trainer's own ``--outer-lr`` has no momentum), blocking or overlapped, built with the
library's API (``simulated_state``, ``SimulatedLocalSGD``, ``train_loop``). Beside each
run: the spectral radius that ``tenfold.distributed.outer_delay`` predicts for its outer
step one round late (below 1: stable). Each finished run is kept in ``--out-dir`` as JSON,
so an interrupted sweep resumes; ``--jobs 2`` runs two at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

#: (label, lr, momentum, overlap): DiLoCo's usual outer step blocking and overlapped, two
#: damped ones the delay model calls stable, and the trainer's --overlap default
CONFIGS = (
    ("blocking nesterov lr0.7 m0.9", 0.7, 0.9, False),
    ("overlap nesterov lr0.7 m0.9", 0.7, 0.9, True),
    ("overlap nesterov lr0.2 m0.9", 0.2, 0.9, True),
    ("overlap nesterov lr0.35 m0.5", 0.35, 0.5, True),
    ("overlap sgd lr0.5", 0.5, 0.0, True),
)


def one_run(label: str, lr: float, momentum: float, overlap: bool, seed: int, steps: int) -> dict:
    import torch

    from tenfold.distributed import OuterStepWarning, SimulatedLocalSGD
    from tenfold.distributed.outer_delay import delayed_spectral_radius
    from tenfold.train.config import TrainConfig
    from tenfold.train.loop import simulated_state, train_loop
    from tenfold.train.recipes import get_recipe

    config = TrainConfig.for_model(
        "char-gpt", steps=steps, workers=2, seed=seed, eval_every=1, overlap=overlap
    )
    torch.set_num_threads(config.threads)
    recipe = get_recipe(config.model)
    data = recipe.load_data(config)
    state = simulated_state(config, data)
    models = [w.model for w in state.workers]
    outers = [
        torch.optim.SGD(
            [p for p in m.parameters() if p.requires_grad],
            lr=lr,
            momentum=momentum,
            nesterov=momentum > 0,
        )  # fmt: skip
        for m in models
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OuterStepWarning)
        sync = SimulatedLocalSGD(
            models,
            sync_every=state.sync.sync_every,
            averager=state.sync.averager,
            outer_optimizers=outers,
            grad_rms=[w.take_grad_rms for w in state.workers],
            overlap=overlap,
        )
    state = dataclasses.replace(state, sync=sync)
    records = train_loop(state, test=recipe.make_evaluator(config, data))
    if overlap:
        sync.wait()
    radius = delayed_spectral_radius(lr, momentum, nesterov=momentum > 0, delay=int(overlap))
    return {
        "label": label,
        "lr": lr,
        "momentum": momentum,
        "nesterov": momentum > 0,
        "overlap": overlap,
        "seed": seed,
        "steps": steps,
        "spectral_radius": round(radius, 4),
        "warned": bool(caught),
        "val_loss": [(r["step"], round(float(r["val_loss"]), 4)) for r in records],
    }


def _key(label: str, seed: int) -> str:
    return f"{label.replace(' ', '_')}_s{seed}"


def _job(args: tuple[Any, ...]) -> str:
    (label, lr, momentum, overlap), seed, steps, out_dir = args
    path = Path(out_dir) / f"{_key(label, seed)}.json"
    if not path.exists():
        result = one_run(label, lr, momentum, overlap, seed, steps)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result) + "\n")
        os.replace(tmp, path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/overlap_outer.py", description=__doc__)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out-dir", type=Path, required=True, help="one JSON per finished run")
    p.add_argument("--out", type=Path, help="the summary JSON")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(c, s, args.steps, str(args.out_dir)) for s in seeds for c in CONFIGS]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            paths = list(pool.map(_job, jobs))
    else:
        paths = [_job(j) for j in jobs]
    runs = [json.loads(Path(path).read_text()) for path in paths]
    summary = {
        "command": "python benchmarks/overlap_outer.py " + " ".join(argv or sys.argv[1:]),
        "runs": runs,
        "final_val_loss": {
            c[0]: [r["val_loss"][-1][1] for r in runs if r["label"] == c[0]] for c in CONFIGS
        },
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
