#!/usr/bin/env python3
"""What one compressed synchronisation costs and saves: tenfold vs float32/float16 all_reduce.

P ranks (``--world-sizes``, default 2, 4 and 8; gloo, CPU, one compute thread each) each
hold a model of n float32 parameters and average it once, in these ways:

* ``tenfold/<collective>/<transmit>`` - ``tenfold.distributed.CompressedAverager(policy,
  transmit=..., collective=..., threads=1)``; the wall time of ``.average()``. Collectives
  (``--collectives``): ``all-gather`` (every rank's packet goes round a ring; each rank
  decodes all P packets) and ``reduce-scatter`` (each rank codes P shard packets, rank j
  reduces shard j, re-codes it and the P reduced shards are all-gathered). Transmit
  (``--transmit``): ``delta`` (``w - w_shared``, the trainer's mode, policy
  ``TargetRate(bits_per_param=tenfold.train.config.DEFAULT_RATE)``) and ``weights`` (the
  paper's scheme, policy ``EntropyAdaptive()``). Both policies are recorded in the JSON.
* ``float32_all_reduce`` - ``dist.all_reduce`` of every tensor in place, then ``/ P``.
* ``float16_all_reduce`` - cast to float16, ``all_reduce``, cast back, ``/ P``.

Timing: one warm-up, then ``--reps`` repetitions interleaved across the methods (so slow
drifts hit all alike); before every repetition each rank restores its own weights and, in
delta mode, the averager's state saved right after ``initialize(shared)`` (untimed: every
repetition codes the same delta from the same reference, with the same round seeds), then
passes a ``dist.barrier()``; a repetition's time is the MAX over ranks of the per-rank wall
time; we report the median, min and max over repetitions. The baselines are timed with the
first transmit mode's cases (interleaved with them) and not again with the second. Numba's
JIT compile is excluded (tiny models are averaged first) and reported separately.

CPU: each rank records its process CPU time (all threads, user + system) per repetition,
and the thread CPU time spent inside the codec's ``compress`` (encode) and
``accumulate``/``decompress`` (decode) calls of ``tenfold.distributed.protocol.packets``
(every codec call of the protocol; its names are wrapped in the rank process; src/ is not
modified). "other" = process
CPU - encode - decode (gloo's threads, copies, division). With P ranks on fewer cores the
CPU-bound phases are starved: compare a phase's CPU seconds with its wall seconds.

Per-phase MODEL for one core per rank (unless ``--no-model``; clearly labelled): the
exchange alone (random bytes of the measured packet sizes moved in the collective's
pattern, max over ranks) and one rank's encode and decode alone (rank 0 runs
``SimulatedAverager`` with the same collective, transmit and policy over all P ranks'
models while the others wait). Predicted wall = encode + comm + decode (serial, the slow
end) and encode + max(comm, decode) (decode fully hidden behind the wire, the fast end).

Models (``--layouts``): ``model`` = 4 weight matrices (45/30/15/10% of the values, 1000
columns; 100 for n < 100k) plus 4 biases of one row; ``single`` = the same values as ONE
flat tensor of n values. Values: a shared Laplacian bulk (scale 0.05, 0.04, 0.03, 0.02 per
layer), 1 value in 10^4 an outlier (Laplace with 8x the scale), plus a per-rank Laplacian
drift of 10% of the scale (what one epoch on the rank's shard moves); biases Laplace(0,
0.01) plus a 10% drift. The shared model (delta mode's reference) is the bulk without the
drift. Same seeds -> same models on every run.

Networks (``--networks``; see ``netns.py``; rebuilt for every P):

* ``loopback`` - the host's unshaped ``lo``.
* ``switch``   - each rank in its own network namespace with a 1 Gbit/s (``tc tbf``) veth to a
  bridge: a switched cluster of 1 GbE hosts, full duplex per rank.
* ``bus``      - all ranks in one namespace whose ``lo`` is shaped to 1 Gbit/s: the ranks
  share one 1 Gbit/s medium.

``--delay MS`` adds a one-way propagation delay of MS milliseconds between the ranks of the
``switch`` (round trip 2 MS: a long link between sites; ``netns.LinkShape.delay_ms``,
recorded in the JSON's ``config.shape``); the default, 0, is the undelayed switch.

Plan order (so a run cut short by ``--max-seconds`` still has the headline): P = 4 first,
then the other P ascending; per P the networks in the given order; per network the 25M
size first, the layout the target is judged on first (bus: ``single``, others:
``model``), delta before weights. Each (network, P) launch gets a share of the remaining
budget proportional to P; the ranks skip what they predict would overrun it.

Issue 19 additions: rank r is pinned to usable core ``r mod cores`` (``--no-pin`` to
disallow; every run's ``cores.label`` says "CPU-SHARED" when P > cores); ``--rates`` runs
the shaped networks at several link rates (keys ``switch@1gbit/P2``); ``torch_powersgd``
(torch's PowerSGD hook on the same deltas, ``torch_baselines.py``) is timed with the
baselines; ``--layouts transformer`` is a GPT-2-shaped model; ``--memory`` adds RSS
(``sync_memory.py``); ``--resume-dir`` makes a cut run resumable; per-phase CPU comes from
``SyncStats`` fields when the library reports them (no wrapping of its internals). The
per-phase MODEL below is off unless ``--model``.

Usage (root is needed for the shaped networks; JSON on stdout, progress on stderr)::

    .venv/bin/python benchmarks/sync.py --quick               # tiny, loopback, P=2,3 (CI)
    .venv/bin/python benchmarks/sync.py --networks switch --rates 1gbit,100mbit,10gbit \\
        --world-sizes 2,4 --sizes 25M --layouts transformer --transmit delta --reps 3 \\
        --memory --resume-dir benchmarks/results/sync_runs --out benchmarks/results/sync.json

The cost model of ``docs/SCALING.md`` is fitted to this JSON by ``benchmarks/scaling.py``.

Exit codes: 0 ok (JSON printed; ``tenfold.available`` is false, with the reason, when the
tenfold path could not be imported), 1 a run failed or was cut by the budget, 2 bad usage
or cannot build the namespaces, 130 interrupted. Namespaces are deleted on every exit path.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netns  # noqa: E402  (sibling module; the path line above makes it importable)
import sync_memory  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

BASELINES = ("float32_all_reduce", "float16_all_reduce")
#: torch's PowerSGD hook on the same tensors (see torch_baselines.py); timed with BASELINES.
POWERSGD = "torch_powersgd"
COLLECTIVES = ("all-gather", "reduce-scatter")
TRANSMITS = ("delta", "weights")
LAYOUTS = ("transformer", "model", "single")
NETWORKS = ("loopback", "switch", "bus")
DEFAULT_SIZES = (25_000_000, 1_000_000)
DEFAULT_WORLD_SIZES = (2, 4)
DEFAULT_RATES = ("1gbit",)
SMOKE_SIZES = (20_000, 100_000)
SMOKE_WORLD_SIZES = (2, 3)
SMOKE_LAYOUTS = ("transformer", "single")
HEADLINE_P = 2
HEADLINE_SIZE = 25_000_000
HEADLINE_RATE = "1gbit"

# Layer layout and value scales of the synthetic models (see the module docstring).
_LAYER_FRACTIONS = (0.45, 0.30, 0.15, 0.10)
_LAYER_SCALES = (0.05, 0.04, 0.03, 0.02)
_OUTLIER_RATE = 1e-4
_OUTLIER_FACTOR = 8.0
_DRIFT_FACTOR = 0.1
_BIAS_SCALE = 0.01

# Margin kept back from the budget for stopping ranks and deleting namespaces (s).
_TEARDOWN_MARGIN_S = 15.0


def tenfold_method(collective: str, transmit: str) -> str:
    """The report's name of one tenfold variant, e.g. ``tenfold/reduce-scatter/delta``."""
    return f"tenfold/{collective}/{transmit}"


# ---- configuration ------------------------------------------------------------------------


def _check_subset(field: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    if not values or any(v not in allowed for v in values):
        raise ValueError(f"{field}: {values} not a non-empty subset of {allowed}")
    if len(set(values)) != len(values):
        raise ValueError(f"{field}: duplicates in {values}")


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One benchmark run.

    Attributes:
        world_sizes: numbers of ranks P (each >= 2), one launch per (network, P).
        sizes: model sizes n in float32 parameters.
        networks: subset of ``NETWORKS``.
        collectives: subset of ``COLLECTIVES`` (tenfold's protocols).
        transmits: subset of ``TRANSMITS`` (what tenfold sends).
        layouts: subset of ``LAYOUTS`` (``model``: 8 tensors; ``single``: one tensor).
        reps: measured repetitions per case (>= 1; fewer if the budget runs out).
        warmup: untimed repetitions per case before the measured ones (>= 0).
        max_seconds: hard bound on the whole run, namespaces' setup and teardown included.
        link_check_bytes: bytes of the point-to-point transfer (rank 0 -> 1) that measures
            each network's raw throughput (0: skip).
        seed: seed of the synthetic models.
        model: also measure the per-phase model (see module docstring).
        shape: the tbf shaping of the ``switch`` and ``bus`` networks (its burst and
            latency; the rate of each launch comes from ``rates``).
        rates: link rates of the shaped networks in tc syntax (one launch per rate).
        pin: pin rank r to usable core ``r mod cores`` (``os.sched_setaffinity``).
        powersgd_rank: PowerSGD's matrix_approximation_rank (0: no PowerSGD baseline).
        memory: also measure host memory (``sync_memory.py``) on loopback.
        memory_size: parameters of the memory measurement's model.
        memory_world_size: ranks of the memory measurement.
        resume_dir: keep each launch's report here and reuse complete ones of the same
            configuration (a cut run resumes where it stopped); None: no resume.
    """

    world_sizes: tuple[int, ...] = DEFAULT_WORLD_SIZES
    sizes: tuple[int, ...] = DEFAULT_SIZES
    networks: tuple[str, ...] = NETWORKS
    collectives: tuple[str, ...] = COLLECTIVES
    transmits: tuple[str, ...] = TRANSMITS
    layouts: tuple[str, ...] = LAYOUTS
    reps: int = 3
    warmup: int = 1
    max_seconds: float = 1800.0
    link_check_bytes: int = 100_000_000
    seed: int = 0
    model: bool = False
    shape: netns.LinkShape = netns.LinkShape()
    rates: tuple[str, ...] = DEFAULT_RATES
    pin: bool = True
    powersgd_rank: int = 4
    memory: bool = False
    memory_size: int = HEADLINE_SIZE
    memory_world_size: int = 2
    resume_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.world_sizes or any(not 2 <= p <= 64 for p in self.world_sizes):
            raise ValueError(f"world_sizes: {self.world_sizes}: need each P in [2, 64]")
        if len(set(self.world_sizes)) != len(self.world_sizes):
            raise ValueError(f"world_sizes: duplicates in {self.world_sizes}")
        if not self.sizes or any(s < 1000 for s in self.sizes):
            raise ValueError(f"sizes: need at least one size, each >= 1000, got {self.sizes}")
        _check_subset("networks", self.networks, NETWORKS)
        _check_subset("collectives", self.collectives, COLLECTIVES)
        _check_subset("transmits", self.transmits, TRANSMITS)
        _check_subset("layouts", self.layouts, LAYOUTS)
        if self.reps < 1:
            raise ValueError(f"reps: {self.reps} < 1")
        if self.warmup < 0:
            raise ValueError(f"warmup: {self.warmup} < 0")
        if self.max_seconds <= _TEARDOWN_MARGIN_S:
            raise ValueError(f"max_seconds: {self.max_seconds} <= {_TEARDOWN_MARGIN_S}")
        if self.link_check_bytes < 0:
            raise ValueError(f"link_check_bytes: {self.link_check_bytes} < 0")
        if not self.rates or len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates: need distinct tc rates, got {self.rates}")
        for rate in self.rates:
            netns.LinkShape(rate=rate)  # validates the tc syntax
        if self.powersgd_rank < 0:
            raise ValueError(f"powersgd_rank: {self.powersgd_rank} < 0")
        if self.shape.delay_ms and set(self.networks) & {"bus", "loopback"}:
            raise ValueError("delay: only the switch network has a delay line (--networks switch)")
        if self.memory_size < 1000 or self.memory_world_size < 2:
            raise ValueError("memory_size: need >= 1000; memory_world_size: need >= 2")

    def launches(self) -> list[tuple[str, str | None, int]]:
        """(network, rate, P) in run order: the headline P first, then the others ascending;
        per P the networks in order, the headline rate first (loopback: rate None, once)."""
        ps = sorted(self.world_sizes, key=lambda p: (p != HEADLINE_P, p))
        rates = sorted(self.rates, key=lambda r: r.lower() != HEADLINE_RATE)
        out: list[tuple[str, str | None, int]] = []
        for p in ps:
            for net in self.networks:
                out += [(net, None, p)] if net == "loopback" else [(net, r, p) for r in rates]
        return out

    def shape_for(self, rate: str) -> netns.LinkShape:
        """The tbf shape of a link of ``rate``: the burst grows to 2 ms of it above 1 Gbit/s
        (a 256 kB bucket empties in 0.2 ms at 10 Gbit/s, too short for smooth shaping)."""
        burst = self.shape.burst
        per_s = _rate_bytes_per_s(rate)
        if per_s is not None and per_s * 0.002 > _size_bytes(burst):
            burst = f"{int(per_s * 0.002 / 1024)}kb"
        return netns.LinkShape(
            rate=rate, burst=burst, latency=self.shape.latency, delay_ms=self.shape.delay_ms
        )


def _rate_bytes_per_s(rate: str) -> float | None:
    """A tc rate (``100mbit``, ``1gbit``) in bytes per second (None if not understood)."""
    import re

    m = re.fullmatch(r"([0-9.]+)([kmgt]?)(bit|bps)", rate.strip().lower())
    if not m:
        return None
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2)]
    return value / 8 if m.group(3) == "bit" else value


def _size_bytes(size: str) -> float:
    """A tc size (``256kb``, ``1mb``, ``4096``) in bytes."""
    t = size.strip().lower().rstrip("b")
    mult = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(t[-1:], 1)
    return float(t[:-1] if mult > 1 else t) * mult


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """What one launch of P rank processes needs (written as JSON for the ranks to read)."""

    network: str
    world_size: int
    init_method: str
    sizes: tuple[int, ...]
    layouts: tuple[str, ...]
    collectives: tuple[str, ...]
    transmits: tuple[str, ...]
    reps: int
    warmup: int
    seed: int
    link_check_bytes: int
    model: bool
    deadline: float  # time.time() by which the ranks stop starting new work
    timeout_s: float  # process-group timeout (every collective is bounded by it)
    ifnames: tuple[str, ...]  # per rank: interface whose tx counter is read
    out_dir: str
    cpus: tuple[int, ...] = ()  # per rank: the core it is pinned to (empty: not pinned)
    powersgd_rank: int = 0  # 0: no PowerSGD baseline


def plan_order(network: str, sizes: Sequence[int], layouts: Sequence[str]) -> list[tuple[int, str]]:
    """(size, layout) cases of one launch, headline first (see the module docstring).

    >>> plan_order("bus", [1_000_000, 25_000_000], ["model", "single"])[0]
    (25000000, 'single')
    """
    first_layout = (
        "transformer" if "transformer" in layouts else "single" if network == "bus" else "model"
    )
    ordered_sizes = sorted(sizes, key=lambda s: s != HEADLINE_SIZE)
    ordered_layouts = sorted(layouts, key=lambda lay: lay != first_layout)
    return [(s, lay) for s in ordered_sizes for lay in ordered_layouts]


# ---- the synthetic models (ranks and tests use the same function) ---------------------------


def model_layout(num_params: int) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of the synthetic model with ``num_params`` values.

    4 weight matrices of ``width`` columns holding 45/30/15/10% of the rows, and 4 biases of
    ``width`` values; the total is ``num_params`` exactly when ``width`` divides it
    (``width`` = 1000, or 100 below 100k parameters).

    >>> sum(int(__import__("math").prod(s)) for _, s in model_layout(1_000_000))
    1000000
    """
    width = 1000 if num_params >= 100_000 else 100
    rows_total = max(len(_LAYER_FRACTIONS), num_params // width - len(_LAYER_FRACTIONS))
    rows = [max(1, int(f * rows_total)) for f in _LAYER_FRACTIONS]
    rows[0] += rows_total - sum(rows)
    layout: list[tuple[str, tuple[int, ...]]] = []
    for i, r in enumerate(rows):
        layout += [(f"layer{i}.weight", (r, width)), (f"layer{i}.bias", (width,))]
    return layout


def transformer_layout(num_params: int) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a GPT-2-shaped model of about ``num_params`` values.

    Width d (512 from 5M parameters, 128 from 200k, else 32), L blocks of ``12 d^2 + 13 d``
    values (qkv, projection, 4x MLP, two layer norms) holding ~80% of the values, position
    embeddings (1024, 256 or 64 x d), a final layer norm, and a token embedding whose
    vocabulary takes the rest: the total is within d of ``num_params`` (25M: 6 blocks, a
    10,860-token vocabulary, 24,999,936 values in 76 tensors).

    >>> abs(sum(int(__import__("math").prod(s)) for _, s in transformer_layout(25_000_000))
    ...     - 25_000_000) < 512
    True
    """
    d = 512 if num_params >= 5_000_000 else 128 if num_params >= 200_000 else 32
    ctx = {512: 1024, 128: 256, 32: 64}[d]
    block = 12 * d * d + 13 * d
    blocks = max(1, int(0.8 * num_params) // block)
    vocab = max(1, (num_params - blocks * block - ctx * d - 2 * d) // d)
    layout: list[tuple[str, tuple[int, ...]]] = [
        ("wte.weight", (vocab, d)),
        ("wpe.weight", (ctx, d)),
    ]
    for i in range(blocks):
        b = f"h{i}."
        layout += [
            (b + "ln_1.weight", (d,)),
            (b + "ln_1.bias", (d,)),
            (b + "attn.c_attn.weight", (3 * d, d)),
            (b + "attn.c_attn.bias", (3 * d,)),
            (b + "attn.c_proj.weight", (d, d)),
            (b + "attn.c_proj.bias", (d,)),
            (b + "ln_2.weight", (d,)),
            (b + "ln_2.bias", (d,)),
            (b + "mlp.c_fc.weight", (4 * d, d)),
            (b + "mlp.c_fc.bias", (4 * d,)),
            (b + "mlp.c_proj.weight", (d, 4 * d)),
            (b + "mlp.c_proj.bias", (d,)),
        ]
    return layout + [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]


def _transformer_weights(
    num_params: int, *, rank: int, seed: int, drift: bool
) -> list[tuple[str, Any]]:
    """GPT-like values: matrices Laplace(0, 0.02) with 1e-4 outliers (8x), biases Laplace(0,
    0.01), layer-norm gains 1 + Laplace(0, 0.01); each rank's drift is 10% of the scale."""
    import numpy as np

    out: list[tuple[str, Any]] = []
    for i, (name, shape) in enumerate(transformer_layout(num_params)):
        shared = np.random.default_rng([seed, 7, i])
        own = np.random.default_rng([seed, 7, i, 1 + rank])
        scale = 0.02 if len(shape) == 2 else 0.01
        w = shared.laplace(0.0, scale, shape)
        if len(shape) == 2:
            n_out = max(1, int(_OUTLIER_RATE * w.size))
            idx = shared.choice(w.size, size=n_out, replace=False)
            w.reshape(-1)[idx] = shared.laplace(0.0, _OUTLIER_FACTOR * scale, n_out)
        if ".ln_" in name or name.startswith("ln_f") and name.endswith(".weight"):
            w = w + (1.0 if name.endswith(".weight") else 0.0)
        if drift:
            w += own.laplace(0.0, _DRIFT_FACTOR * scale, shape)
        out.append((name, w.astype(np.float32)))
    return out


def make_weights(
    num_params: int, *, rank: int, seed: int, drift: bool = True, layout: str = "model"
) -> list[tuple[str, Any]]:
    """The float32 numpy arrays of rank ``rank``'s model (see module docstring), by name.

    ``drift=False`` gives the shared model (identical on every rank): the same bulk and
    outliers without the rank's own drift. ``layout="single"`` returns the same values
    concatenated into one flat tensor named ``"flat"``; ``"transformer"`` the GPT-shaped
    tensors of :func:`transformer_layout`.
    """
    import numpy as np

    if layout not in LAYOUTS:
        raise ValueError(f"layout: {layout!r} not in {LAYOUTS}")
    if layout == "transformer":
        return _transformer_weights(num_params, rank=rank, seed=seed, drift=drift)
    out: list[tuple[str, Any]] = []
    for i, (name, shape) in enumerate(model_layout(num_params)):
        layer = i // 2
        shared = np.random.default_rng([seed, i])
        own = np.random.default_rng([seed, i, 1 + rank])
        if name.endswith(".bias"):
            w = shared.laplace(0.0, _BIAS_SCALE, shape)
            if drift:
                w = w + own.laplace(0.0, 0.1 * _BIAS_SCALE, shape)
        else:
            b = _LAYER_SCALES[layer]
            w = shared.laplace(0.0, b, shape)
            n_out = max(1, int(_OUTLIER_RATE * w.size))
            idx = shared.choice(w.size, size=n_out, replace=False)
            w.reshape(-1)[idx] = shared.laplace(0.0, _OUTLIER_FACTOR * b, n_out)
            if drift:
                w += own.laplace(0.0, _DRIFT_FACTOR * b, shape)
        out.append((name, w.astype(np.float32)))
    if layout == "single":
        return [("flat", np.concatenate([w.reshape(-1) for _, w in out]))]
    return out


def computed_values(collective: str, transmit: str, p: int, n: int) -> tuple[int, int]:
    """(values encoded, values decoded) per rank from the protocol, when SyncStats lacks them.

    all-gather: n coded, P n decoded. reduce-scatter: n + n/P coded (its shards, then its
    reduced shard), 2n decoded (the P packets of its shard and the P reduced shards) plus
    n (P-1)/P in delta mode with error feedback (its own other shards, for the residual).
    """
    if collective == "all-gather":
        return n, p * n
    extra = n * (p - 1) // p if transmit == "delta" else 0
    return n + n // p, 2 * n + extra


# ---- the rank processes ---------------------------------------------------------------------


class _Recorder:
    """Appends one JSON object per line to this rank's results file (flushed each time)."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("a", encoding="utf-8")

    def __call__(self, kind: str, **fields: Any) -> None:
        self._f.write(json.dumps({"kind": kind, "t": time.time(), **fields}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _tx_bytes(ifname: str) -> int | None:
    """This namespace's transmit byte counter of ``ifname`` (None if unreadable)."""
    try:
        return int(Path(f"/sys/class/net/{ifname}/statistics/tx_bytes").read_text())
    except (OSError, ValueError):
        return None


def worker_main(config_path: Path, rank: int) -> int:
    """Entry point of one rank: run the whole plan for one network, write JSON lines."""
    raw: dict[str, Any] = json.loads(config_path.read_text())
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    cfg = WorkerConfig(**fields)
    if cfg.cpus:  # before torch/gloo start threads: they inherit the affinity
        os.sched_setaffinity(0, {cfg.cpus[rank]})
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rec = _Recorder(Path(cfg.out_dir) / f"rank{rank}.jsonl")
    dist.init_process_group(
        "gloo",
        init_method=cfg.init_method,
        rank=rank,
        world_size=cfg.world_size,
        timeout=datetime.timedelta(seconds=cfg.timeout_s),
    )
    try:
        rec(
            "hello",
            rank=rank,
            pid=os.getpid(),
            torch_threads=torch.get_num_threads(),
            numba_threads=os.environ.get("NUMBA_NUM_THREADS"),
            gloo_ifname=os.environ.get("GLOO_SOCKET_IFNAME"),
            affinity=sorted(os.sched_getaffinity(0)),
        )
        _Rank(cfg, rank, rec).run()
        rec("done")
    finally:
        with contextlib.suppress(Exception):
            from tenfold.distributed import destroy_process_group

            destroy_process_group()
        rec.close()
    return 0


def _stats_cpu(stats: dict[str, Any]) -> dict[str, float] | None:
    """Encode and decode CPU seconds from SyncStats, when it has them (else None).

    Read by name with defaults, so it works before and after SyncStats gains per-phase CPU
    fields (``encode_cpu_seconds``, ``decode_cpu_seconds``; the pipelined sync codes in
    worker threads, which only the library itself can clock).
    """
    enc, dec = stats.get("encode_cpu_seconds"), stats.get("decode_cpu_seconds")
    if enc is None or dec is None:
        return None
    return {"encode": float(enc), "decode": float(dec)}


class _Rank:
    """The measurement plan of one rank; every rank executes the same collectives in order."""

    def __init__(self, cfg: WorkerConfig, rank: int, rec: _Recorder) -> None:
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        self.cfg, self.rank, self.rec = cfg, rank, rec
        self.k = cfg.world_size
        self.ifname = cfg.ifnames[rank]
        self.tenfold: Any = None  # the tenfold module, once importable
        self.policies: dict[str, Any] = {}  # transmit -> policy
        self.CompressedAverager: Any = None
        self.last_cpu_seconds = 0.0  # CPU time of the latest timed() operation (s)
        self.rate: dict[str, float] = {}  # method -> seconds per parameter (budget guesses)
        self.last_stats_by_method: dict[str, dict[str, Any]] = {}  # for the phase model
        # rank 0's copy of the other ranks' models for the phase model: ((size, layout), ...)
        self.peer_models: tuple[tuple[int, str] | None, list[Any]] = (None, [])

    # -- collective helpers

    def agree(self, flag: bool) -> bool:
        """True on every rank iff ``flag`` is True on any rank (an all_reduce MAX)."""
        t = self.torch.tensor([int(flag)], dtype=self.torch.int32)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item())

    def out_of_time(self, predicted_s: float) -> bool:
        """Whether the ranks agree that ``predicted_s`` more seconds would pass the deadline."""
        return self.agree(time.time() + predicted_s > self.cfg.deadline)

    def timed(self, op: Callable[[], Any]) -> tuple[float, Any, int | None]:
        """Barrier, then this rank's wall time of ``op()`` and the bytes it put on its link.

        Also sets ``self.last_cpu_seconds``: this process's CPU time (user + system, all its
        threads, gloo's included) during ``op()``.
        """
        self.dist.barrier()
        tx0 = _tx_bytes(self.ifname)
        c0 = time.process_time()
        t0 = time.perf_counter()
        result = op()
        seconds = time.perf_counter() - t0
        self.last_cpu_seconds = time.process_time() - c0
        tx1 = _tx_bytes(self.ifname)
        tx = tx1 - tx0 if tx0 is not None and tx1 is not None else None
        return seconds, result, tx

    # -- plan

    def run(self) -> None:
        """Link check, tenfold warm-up (JIT compile), then every (size, layout) case."""
        self.link_check()
        self.load_tenfold()
        for size, layout in plan_order(self.cfg.network, self.cfg.sizes, self.cfg.layouts):
            if not self.run_case(size, layout):
                return

    def estimate(self, methods: Sequence[str], size: int) -> float:
        """Predicted seconds of warm-up + reps of ``methods`` at ``size`` (+50% set-up)."""
        if not self.rate:
            return 0.0
        worst = max(self.rate.values())
        per_round = sum(self.rate.get(m, worst) * size for m in methods)
        return 1.5 * per_round * (self.cfg.warmup + self.cfg.reps)

    def link_check(self) -> None:
        """Raw point-to-point throughput rank 0 -> rank 1 (3 transfers, receiver's time)."""
        n = self.cfg.link_check_bytes
        if n == 0:
            return
        buf = self.torch.zeros(n, dtype=self.torch.uint8)
        times = []
        for _ in range(3):

            def op() -> None:
                if self.rank == 0:
                    self.dist.send(buf, dst=1)
                elif self.rank == 1:
                    self.dist.recv(buf, src=0)

            seconds, _, _ = self.timed(op)
            times.append(seconds)
        self.rec("link_check", bytes=n, seconds=times)

    def make_averager(self, collective: str, transmit: str) -> Any:
        """One CompressedAverager of the benchmark: one codec thread (a core per rank)."""
        return self.CompressedAverager(
            self.policies[transmit], transmit=transmit, collective=collective, threads=1
        )

    def load_tenfold(self) -> None:
        """Import tenfold lazily; time the first (JIT-compiling) and second tiny average."""
        error = None
        t0 = time.perf_counter()
        try:
            import tenfold
            from tenfold.distributed import CompressedAverager
            from tenfold.train.config import DEFAULT_RATE

            self.policies = {
                "delta": tenfold.TargetRate(bits_per_param=DEFAULT_RATE),
                "weights": tenfold.EntropyAdaptive(),
            }
            self.tenfold = tenfold
            self.CompressedAverager = CompressedAverager
        except Exception as exc:  # any failure: the tenfold path is reported unavailable
            error = f"{type(exc).__name__}: {exc}"
        import_s = time.perf_counter() - t0
        if self.agree(error is not None):
            self.rec("tenfold", available=False, error=error or "unavailable on another rank")
            self.tenfold = None
            return
        calls: dict[str, list[float]] = {}
        for collective in self.cfg.collectives:
            for transmit in self.cfg.transmits:
                shared = [
                    (n, self.torch.from_numpy(w))
                    for n, w in make_weights(2_000, rank=0, seed=self.cfg.seed + 1, drift=False)
                ]
                tiny = [
                    (n, self.torch.from_numpy(w))
                    for n, w in make_weights(2_000, rank=self.rank, seed=self.cfg.seed + 1)
                ]
                avg = self.make_averager(collective, transmit)
                avg.initialize(shared)
                key = tenfold_method(collective, transmit)
                call = functools.partial(avg.average, tiny)
                calls[key] = [self.timed(call)[0] for _ in range(2)]
        self.rec(
            "tenfold",
            available=True,
            error=None,
            version=getattr(self.tenfold, "__version__", None),
            policies={t: _policy_config(p) for t, p in self.policies.items()},
            codec_cpu_clock="SyncStats encode_cpu_seconds/decode_cpu_seconds when present",
            import_seconds=import_s,
            first_call_seconds=max(c[0] for c in calls.values()),
            second_call_seconds=max(c[1] for c in calls.values()),
            calls=calls,
        )

    def run_case(self, size: int, layout: str) -> bool:
        """Every transmit mode of one (size, layout); False when the budget stopped it."""
        torch = self.torch
        local = make_weights(size, rank=self.rank, seed=self.cfg.seed, layout=layout)
        originals = [(n, torch.from_numpy(w)) for n, w in local]
        params = [(n, w.clone()) for n, w in originals]
        self.rec(
            "model",
            size=size,
            layout=layout,
            num_params=sum(w.numel() for _, w in params),
            tensors=[[n, list(w.shape)] for n, w in params],
        )
        # Untimed: the exact float32 mean every method is checked against.
        reference = [p.clone() for _, p in params]
        for t in reference:
            self.dist.all_reduce(t)
            t.div_(self.k)
        shared_np = make_weights(size, rank=0, seed=self.cfg.seed, drift=False, layout=layout)
        shared = [(n, torch.from_numpy(w)) for n, w in shared_np]
        for i, transmit in enumerate(self.cfg.transmits if self.tenfold is not None else [None]):
            ops: dict[str, tuple[Callable[[], Any], Callable[[], None]]] = {}
            if i == 0:  # the baselines once per (size, layout), with the first transmit
                ops["float32_all_reduce"] = (lambda: self.allreduce_f32(params), _nothing)
                ops["float16_all_reduce"] = (lambda: self.allreduce_f16(params), _nothing)
                if self.cfg.powersgd_rank:
                    ops[POWERSGD] = (self.powersgd(params, shared), _nothing)
            avgs: dict[str, tuple[Any, dict[str, Any]]] = {}
            if transmit is not None:
                for collective in self.cfg.collectives:
                    avg = self.make_averager(collective, transmit)
                    avg.initialize(shared)  # the shared reference (identical on all ranks)
                    saved = avg.state_dict()
                    name = tenfold_method(collective, transmit)
                    avgs[name] = (avg, saved)
                    ops[name] = (
                        functools.partial(avg.average, params),
                        functools.partial(avg.load_state_dict, saved),
                    )
            if self.out_of_time(self.estimate(list(ops), size)):
                self.rec(
                    "stopped", reason="time budget", size=size, layout=layout, transmit=transmit
                )
                return False
            if not self.run_reps(size, layout, transmit, ops, params, originals, reference):
                return False
            names = list(avgs)
            # Free this rank's averagers (up to P model-sized accumulators each) before
            # rank 0 holds P models for the phase model: 8 ranks x 25M must fit in memory.
            ops.clear()
            avgs.clear()
            avg = saved = None  # the loop's last references
            gc.collect()
            if self.cfg.model and names:
                for name in names:
                    collective = name.split("/")[1]
                    # ~reps x (exchange + one process coding all P models, which is about
                    # the oversubscribed sync's CPU), + making the other models once.
                    sync_s = self.rate.get(name, 0.0) * size
                    making = (self.k - 1) * size * 1e-7  # ~0.1 us per generated value
                    if self.out_of_time(min(self.cfg.reps, 3) * 2 * sync_s + making):
                        self.rec("stopped", reason="time budget", size=size, layout=layout,
                                 transmit=transmit, before="phase_model")  # fmt: skip
                        return False
                    self.phase_model(size, layout, collective, str(transmit), local, shared_np)
        self.drop_peer_models()
        return True

    def run_reps(
        self,
        size: int,
        layout: str,
        transmit: str | None,
        ops: dict[str, tuple[Callable[[], Any], Callable[[], None]]],
        params: Sequence[tuple[str, Any]],
        originals: Sequence[tuple[str, Any]],
        reference: Sequence[Any],
    ) -> bool:
        """Warm-up and measured reps of ``ops`` (interleaved); False if the budget stopped."""

        def restore(reset: Callable[[], None]) -> None:
            for (_, p), (_, o) in zip(params, originals, strict=True):
                p.copy_(o)
            reset()

        last: dict[str, float] = {}
        for w in range(self.cfg.warmup):
            for method, (op, reset) in ops.items():
                restore(reset)
                seconds, _, _ = self.timed(op)
                last[method] = seconds
                self.rate[method] = seconds / size
                self.rec("rep", size=size, layout=layout, method=method, rep=w, warmup=True,
                         seconds=seconds)  # fmt: skip
        for rep in range(self.cfg.reps):
            if rep > 0 and self.out_of_time(1.5 * sum(last.values())):
                self.rec("stopped", reason="time budget", size=size, layout=layout,
                         transmit=transmit, reps_done=rep)  # fmt: skip
                return False
            for method, (op, reset) in ops.items():
                restore(reset)
                seconds, result, tx = self.timed(op)
                last[method] = seconds
                self.rate[method] = seconds / size
                fields: dict[str, Any] = {}
                if method.startswith("tenfold"):
                    fields["stats"] = _stats_record(result, with_tensors=rep == 0)
                    fields["codec_cpu_seconds"] = _stats_cpu(fields["stats"])
                elif method == POWERSGD:
                    fields["powersgd"] = result
                self.rec("rep", size=size, layout=layout, method=method, rep=rep, warmup=False,
                         seconds=seconds, cpu_seconds=self.last_cpu_seconds, tx_bytes=tx,
                         **fields)  # fmt: skip
                if rep == 0:
                    # Untimed: what this method's average is (hash, error vs exact mean).
                    values = [p for _, p in params]
                    self.rec("check", size=size, layout=layout, method=method,
                             **_check(values, reference))  # fmt: skip
                    if method.startswith("tenfold"):
                        self.last_stats_by_method[method] = fields["stats"]
        return True

    def powersgd(
        self, params: Sequence[tuple[str, Any]], shared: Sequence[tuple[str, Any]]
    ) -> Callable[[], Any]:
        """torch's PowerSGD hook on the deltas against ``shared`` (torch_baselines.py),
        primed past its plain all-reduce iterations (untimed; ``params`` restored after)."""
        import torch_baselines

        op = torch_baselines.PowerSGDSync(
            [p for _, p in params], [s for _, s in shared], rank=self.cfg.powersgd_rank
        )
        saved = [p.clone() for _, p in params]
        op.prime()
        for (_, p), s in zip(params, saved, strict=True):
            p.copy_(s)
        return op

    def allreduce_f32(self, params: Sequence[tuple[str, Any]]) -> None:
        """In-place float32 all_reduce of each tensor, then / P (the zero-copy baseline)."""
        for _, p in params:
            self.dist.all_reduce(p)
            p.div_(self.k)

    def allreduce_f16(self, params: Sequence[tuple[str, Any]]) -> None:
        """Cast each tensor to float16, all_reduce (summing in float16), cast back, / P."""
        for _, p in params:
            h = p.to(self.torch.float16)
            self.dist.all_reduce(h)
            p.copy_(h)
            p.div_(self.k)

    def comm_only(self, collective: str, stats: dict[str, Any]) -> Callable[[], None]:
        """An exchange of random bytes of the measured packet sizes, in the protocol's pattern.

        all-gather: ``all_gather_bytes`` of a payload as long as this rank's packet.
        reduce-scatter: each rank sends 1/P of its packet bytes to every peer (all posted at
        once, like the shard transfer), then all-gathers a payload of its reduced shard's
        size, estimated from SyncStats as ``(bytes_sent - (P-1)/P packet) / (P-1)``.
        """
        import numpy as np

        from tenfold.distributed import all_gather_bytes

        torch, dist, k = self.torch, self.dist, self.k
        packets = [int(b) for b in stats["packet_bytes"]]
        rng = np.random.default_rng([self.cfg.seed, self.rank])
        if collective == "all-gather":
            payload = rng.integers(0, 256, packets[self.rank], dtype=np.uint8).tobytes()
            return lambda: (all_gather_bytes(payload), None)[1]
        shard = max(1, packets[self.rank] // k)
        scatter_sent = shard * (k - 1)
        reduced = max(1, (int(stats["bytes_sent"]) - scatter_sent) // (k - 1))
        send = torch.from_numpy(rng.integers(0, 256, shard, dtype=np.uint8))
        bufs = {j: torch.empty(max(1, packets[j] // k), dtype=torch.uint8) for j in range(k)}
        payload = rng.integers(0, 256, reduced, dtype=np.uint8).tobytes()

        def op() -> None:
            reqs = []
            for j in range(k):
                if j != self.rank:
                    reqs.append(dist.isend(send, dst=j))
                    reqs.append(dist.irecv(bufs[j], src=j))
            for r in reqs:
                r.wait()
            all_gather_bytes(payload)

        return op

    def phase_model(
        self,
        size: int,
        layout: str,
        collective: str,
        transmit: str,
        local: Sequence[tuple[str, Any]],
        shared: Sequence[tuple[str, Any]],
    ) -> None:
        """Measure the MODEL's terms: exchange alone, then one rank's encode/decode alone.

        1. :meth:`comm_only` with this rank's last measured stats, after a barrier;
        2. rank 0 alone runs ``SimulatedAverager`` (same collective, transmit, policy, one
           thread) over all P ranks' models, from the same shared reference, while the
           others wait at a barrier: each worker's encode and decode seconds are what that
           rank's phases cost on a core of its own.
        """
        from tenfold.distributed import SimulatedAverager

        method = tenfold_method(collective, transmit)
        stats = self.last_stats_by_method.get(method)
        if stats is None:
            return
        op = self.comm_only(collective, stats)
        reps = max(1, min(self.cfg.reps, 3))
        for rep in range(reps):
            seconds, _, tx = self.timed(op)
            self.rec("comm_only", size=size, layout=layout, method=method, rep=rep,
                     seconds=seconds, tx_bytes=tx)  # fmt: skip
        self.dist.barrier()
        # Rank 0 holds ~5 copies of P models (locals, work, shared, residuals, sums).
        need = 5 * self.k * size * 4
        avail = _mem_available()
        if self.rank == 0 and avail is not None and need > 0.7 * avail:
            self.rec("single_rank_skipped", size=size, layout=layout, method=method,
                     reason=f"memory: needs ~{need / 2**30:.1f} GiB, "
                     f"{avail / 2**30:.1f} GiB available")  # fmt: skip
        elif self.rank == 0:
            torch = self.torch
            key = (size, layout)
            if self.peer_models[0] != key:  # the other ranks' models, made once per case
                self.peer_models = (None, [])  # free the last case's before making these
                self.peer_models = (
                    key,
                    [
                        make_weights(size, rank=r, seed=self.cfg.seed, layout=layout)
                        for r in range(1, self.k)
                    ],
                )
            locals_ = [list(local), *self.peer_models[1]]
            sim = SimulatedAverager(
                self.policies[transmit], transmit=transmit, collective=collective, threads=1
            )
            sim.initialize([[(n, torch.from_numpy(w.copy())) for n, w in shared]
                            for _ in range(self.k)])  # fmt: skip
            saved = sim.state_dict()
            for rep in range(reps):
                sim.load_state_dict(saved)
                work = [[(n, torch.from_numpy(w.copy())) for n, w in m] for m in locals_]
                out = sim.average(work)
                self.rec("single_rank", size=size, layout=layout, method=method, rep=rep,
                         encode_seconds=[s.encode_seconds for s in out],
                         decode_seconds=[s.decode_seconds for s in out])  # fmt: skip
                del work
            del locals_, sim
        self.dist.barrier()

    def drop_peer_models(self) -> None:
        """Free the cached models of the other ranks (rank 0, after each case)."""
        self.peer_models = (None, [])


def _mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None if unreadable)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _nothing() -> None:
    """The baselines keep no state between repetitions."""


def _policy_config(policy: Any) -> dict[str, Any]:
    get = getattr(policy, "get_config", None)
    return dict(get()) if callable(get) else {"repr": repr(policy)}


def _stats_record(stats: Any, *, with_tensors: bool) -> dict[str, Any]:
    """The SyncStats fields the report needs (per-tensor N/H only when asked)."""
    d = stats.as_dict() if hasattr(stats, "as_dict") else dict(vars(stats))
    if not with_tensors:
        d.pop("tensors", None)
    return d


def _check(values: Sequence[Any], reference: Sequence[Any]) -> dict[str, Any]:
    """sha256 of the averaged weights and their error against the exact float32 mean."""
    h = hashlib.sha256()
    for v in values:
        h.update(v.contiguous().numpy().tobytes())
    out: dict[str, Any] = {"sha256": h.hexdigest()}
    if reference:
        diff = [(v.double() - r.double()) for v, r in zip(values, reference, strict=True)]
        n = sum(d.numel() for d in diff)
        ref_sq = sum(float((r.double() ** 2).sum()) for r in reference)
        err_sq = sum(float((d**2).sum()) for d in diff)
        lo = min(float(r.min()) for r in reference)
        hi = max(float(r.max()) for r in reference)
        out["error_vs_exact_mean"] = {
            "max_abs": max(float(d.abs().max()) for d in diff),
            "rms": (err_sq / n) ** 0.5,
            "rms_relative_to_weights_rms": (err_sq / ref_sq) ** 0.5 if ref_sq else None,
            "max_abs_relative_to_range": max(float(d.abs().max()) for d in diff) / (hi - lo)
            if hi > lo
            else None,
        }
    return out


# ---- launching K ranks ---------------------------------------------------------------------


@dataclass
class _Launch:
    """The K rank processes of one network, their logs and exit codes."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    returncodes: list[int | None]
    timed_out: bool = False


_LIVE_PROCS: list[subprocess.Popen[bytes]] = []
_LIVE_TOPOLOGIES: list[netns.Topology] = []


def _stop(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """SIGTERM then SIGKILL our own rank processes (by their Popen handles only)."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
    end = time.monotonic() + grace_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, end - time.monotonic()))
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if this orchestrator dies (even by SIGKILL).

    Linux's PR_SET_PDEATHSIG survives the exec of ``ip netns exec`` and of python, so no
    rank outlives a killed run (which would keep its namespace alive).
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _cleanup_all() -> None:
    """atexit/finally: stop every rank we started, delete every namespace we made."""
    _stop(_LIVE_PROCS)
    _LIVE_PROCS.clear()
    while _LIVE_TOPOLOGIES:
        for err in netns.teardown(_LIVE_TOPOLOGIES.pop()):
            _log(f"teardown: {err}")


def _launch(
    cfg: Any,
    topology: netns.Topology,
    work: Path,
    hard_deadline: float,
    *,
    script: Path | None = None,
) -> _Launch:
    """Start K ranks (each under its namespace) and wait for them, bounded in time.

    Each rank runs ``script`` (default: this file) with ``--worker-config <work>/worker.json
    --worker-rank r``; ``cfg`` is a dataclass written to that JSON file.
    """
    config_path = work / "worker.json"
    config_path.write_text(json.dumps(asdict(cfg)))
    procs, logs = [], []
    for place in topology.placements:
        env = dict(os.environ)
        env.update(
            GLOO_SOCKET_IFNAME=place.ifname,
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            NUMBA_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(var, None)
        argv = place.exec_prefix() + [
            sys.executable,
            str((script or Path(__file__)).resolve()),
            "--worker-config",
            str(config_path),
            "--worker-rank",
            str(place.rank),
        ]
        log = work / f"rank{place.rank}.log"
        logs.append(log)
        with log.open("wb") as f:
            proc = subprocess.Popen(
                argv, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
            )
        procs.append(proc)
        _LIVE_PROCS.append(proc)
    launch = _Launch(procs=procs, logs=logs, returncodes=[None] * len(procs))
    failed_at: float | None = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.monotonic()  # peers should fail fast on the broken group
        if failed_at is not None and time.monotonic() - failed_at > 15:
            _stop(procs)
            break
        if time.time() > hard_deadline:
            launch.timed_out = True
            _stop(procs)
            break
        time.sleep(0.2)
    launch.returncodes = [p.poll() for p in procs]
    for p in procs:
        if p in _LIVE_PROCS:
            _LIVE_PROCS.remove(p)
    return launch


def _read_records(out_dir: Path, world_size: int) -> list[list[dict[str, Any]]]:
    ranks = []
    for r in range(world_size):
        path = out_dir / f"rank{r}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        recs = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                recs.append(json.loads(line))
        ranks.append(recs)
    return ranks


# ---- aggregation ---------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, Any] | None:
    """median/min/max (and every value) of a non-empty list; None if empty."""
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": list(values),
    }


def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None) -> float | None:
    if not num or not den or not den["median"]:
        return None
    return float(num["median"] / den["median"])


def _cpu_summary(reps: dict[int, list[dict]], k: int) -> dict[str, Any] | None:
    """CPU time the K ranks burned per repetition, and the wall time it implies here.

    If ``sum_over_ranks / usable cores`` is close to the measured wall time, the operation
    was CPU-bound on this machine (not network-bound). None when not recorded.
    """
    if not all(r.get("cpu_seconds") is not None for rs in reps.values() for r in rs):
        return None
    sums = [sum(r["cpu_seconds"] for r in rs) for rs in reps.values()]
    cores = len(os.sched_getaffinity(0)) or 1
    return {
        "what": "process CPU time (user + system, all threads) of each rank during the "
        "operation, summed over the K ranks; median over reps. floor = that sum / usable "
        "cores: the wall time the work alone needs on this machine when spread perfectly",
        "sum_over_ranks_median": statistics.median(sums),
        "per_rank_max_median": statistics.median(
            max(r["cpu_seconds"] for r in rs) for rs in reps.values()
        ),
        "usable_cores": cores,
        "floor_seconds_here": statistics.median(sums) / min(cores, k),
    }


def _size_label(p: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if p >= div and p % div == 0:
            return f"{p // div}{suffix}"
    return str(p)


def _per_rep(ranks: Sequence[Sequence[dict[str, Any]]], **match: Any) -> dict[int, list[dict]]:
    """rep index -> the matching record of every rank (reps some rank missed are dropped)."""
    by_rep: dict[int, list[dict]] = {}
    for recs in ranks:
        for r in recs:
            if all(r.get(k) == v for k, v in match.items()):
                by_rep.setdefault(int(r["rep"]), []).append(r)
    return {rep: rs for rep, rs in sorted(by_rep.items()) if len(rs) == len(ranks)}


def _per_rank_medians(reps: dict[int, list[dict]], get: Callable[[dict], float]) -> list[float]:
    """Per rank (in rank order), the median over reps of ``get(record)``."""
    k = len(next(iter(reps.values())))
    return [statistics.median(get(rs[r]) for rs in reps.values()) for r in range(k)]


def _phase_of(phase: str) -> Callable[[dict], float]:
    """A getter of one SyncStats phase's seconds from a rep record."""
    return lambda r: float(r["stats"][f"{phase}_seconds"])


def _tenfold_fields(reps: dict[int, list[dict]], method: str, k: int, n: int) -> dict[str, Any]:
    """Bytes, values, phases (wall and CPU) of one tenfold method, per rank and overall."""
    _, collective, transmit = method.split("/")
    stats = [[r["stats"] for r in rs] for rs in reps.values()]
    m: dict[str, Any] = {"collective": collective, "transmit": transmit}
    sent = _per_rank_medians(reps, lambda r: r["stats"]["bytes_sent"])
    m["bytes_sent_per_rank"] = {
        "per_rank": sent,
        "max": max(sent),
        "mean": statistics.fmean(sent),
        "what": "SyncStats.bytes_sent: every packet byte this rank puts on the wire in "
        "the collective (median over reps)",
    }
    have = all(s.get("values_decoded") for rep in stats for s in rep)
    if have:
        enc = _per_rank_medians(reps, lambda r: r["stats"]["values_encoded"])
        dec = _per_rank_medians(reps, lambda r: r["stats"]["values_decoded"])
        source = "SyncStats.values_encoded / values_decoded"
    else:
        e, d = computed_values(collective, transmit, k, n)
        enc, dec, source = [float(e)] * k, [float(d)] * k, "computed from the protocol"
    m["values_per_rank"] = {
        "encoded": enc,
        "decoded": dec,
        "encoded_max": max(enc),
        "decoded_max": max(dec),
        "source": source,
    }
    m["bits_per_param"] = statistics.median(s["bits_per_param"] for r in stats for s in r)
    m["quantized_bits_per_param"] = statistics.median(
        s["quantized_bits_per_param"] for r in stats for s in r
    )
    # Every numeric SyncStats field named *_seconds is a phase: wall (encode, comm, decode,
    # and whatever the library adds) or CPU (*_cpu_seconds); found by name, never assumed.
    timed = [
        k
        for k, v in stats[0][0].items()
        if k.endswith("_seconds") and isinstance(v, int | float) and not isinstance(v, bool)
    ]
    phases = [k.removesuffix("_seconds") for k in timed if "cpu" not in k]
    cpu_phases = [k.removesuffix("_seconds") for k in timed if "cpu" in k]
    m["phases_seconds"] = {
        "what": "wall time, SyncStats: per rep the max over ranks of each phase, then over "
        "reps; per_rank: each rank's median",
        **{ph: _summary([max(s[f"{ph}_seconds"] for s in rep) for rep in stats]) for ph in phases},
        "per_rank": {ph: _per_rank_medians(reps, _phase_of(ph)) for ph in phases},
    }
    if cpu_phases:
        m["phases_cpu_seconds_syncstats"] = {
            "what": "CPU seconds per phase as SyncStats reports them (all the library's "
            "threads); per rep the max over ranks, then median over reps; per_rank: medians",
            **{
                ph: _summary([max(s[f"{ph}_seconds"] for s in rep) for rep in stats])
                for ph in cpu_phases
            },
            "per_rank": {ph: _per_rank_medians(reps, _phase_of(ph)) for ph in cpu_phases},
        }
    medians = {ph: m["phases_seconds"][ph]["median"] for ph in phases}
    total = sum(medians.values())
    m["phase_shares"] = {ph: v / total for ph, v in medians.items()} if total else None
    m["dominant_phase"] = max(medians, key=lambda ph: medians[ph]) if medians else None
    if all(r.get("codec_cpu_seconds") for rs in reps.values() for r in rs):
        cpu_enc = _per_rank_medians(reps, lambda r: r["codec_cpu_seconds"]["encode"])
        cpu_dec = _per_rank_medians(reps, lambda r: r["codec_cpu_seconds"]["decode"])
        cpu_all = _per_rank_medians(reps, lambda r: r["cpu_seconds"])
        m["phases_cpu_seconds_per_rank"] = {
            "what": "CPU seconds per rank (median over reps): encode/decode = SyncStats' "
            "encode_cpu_seconds / decode_cpu_seconds; other = process CPU of the sync - both "
            "(gloo's threads, copies, division). Compare with phases_seconds.per_rank: wall "
            ">> CPU means the rank waited (for the network, or, oversubscribed, for a core)",
            "encode": cpu_enc,
            "decode": cpu_dec,
            "other": [a - e - d for a, e, d in zip(cpu_all, cpu_enc, cpu_dec, strict=True)],
        }
    first_rep = reps[min(reps)]
    m["per_tensor_rank0"] = [
        {key: t.get(key) for key in ("name", "num_values", "N", "H", "bits_per_param", "mode")}
        for t in first_rep[0]["stats"].get("tensors", [])[:32]
    ]
    return m


def aggregate_network(
    ranks: Sequence[Sequence[dict[str, Any]]],
    *,
    topology: netns.Topology,
    cfg: BenchConfig,
    network: str | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Turn P ranks' JSON lines into the report of one (network, P) launch."""
    k = world_size if world_size is not None else len(ranks)
    network = network or topology.name
    first = {r["kind"]: r for r in ranks[0]} if ranks and ranks[0] else {}
    dedicated = all(p.dedicated_interface for p in topology.placements)
    out: dict[str, Any] = {
        "network": network,
        "world_size": k,
        "topology": topology.name,
        "description": topology.description,
        "shaping": asdict(topology.shape) if topology.shape else None,
        "placements": [asdict(p) for p in topology.placements],
    }
    # Raw link check: the receiver's (rank 1's) time of a rank 0 -> 1 transfer.
    lc = next((r for r in ranks[1] if r["kind"] == "link_check"), None) if k > 1 else None
    if lc:
        best = min(lc["seconds"])
        out["link_check"] = {
            "what": "point-to-point send rank 0 -> rank 1, receiver's wall time, 3 transfers",
            "bytes": lc["bytes"],
            "seconds": lc["seconds"],
            "goodput_gbit_per_s_best": 8 * lc["bytes"] / best / 1e9,
        }
    tf = first.get("tenfold")
    out["tenfold"] = (
        {key: tf.get(key) for key in tf if key != "kind"} if tf else {"available": False}
    )
    if tf and tf.get("available"):
        firsts = [next(r for r in recs if r["kind"] == "tenfold") for recs in ranks]
        out["tenfold"]["jit_compile"] = {
            "what": "wall time of the first and second average() of a 2k-parameter model per "
            "rank and variant; first - second ~ numba JIT compile (or cache load), excluded",
            "first_call_seconds_max_over_ranks": max(f["first_call_seconds"] for f in firsts),
            "second_call_seconds_max_over_ranks": max(f["second_call_seconds"] for f in firsts),
        }
    results = []
    methods = [
        *BASELINES,
        POWERSGD,
        *(tenfold_method(c, t) for t in cfg.transmits for c in cfg.collectives),
    ]
    for size, layout in plan_order(network, cfg.sizes, cfg.layouts):
        model = next(
            (
                r
                for r in ranks[0]
                if r["kind"] == "model" and r["size"] == size and r.get("layout") == layout
            ),
            None,
        )
        if model is None:
            continue
        n = model["num_params"]
        entry: dict[str, Any] = {
            "size": _size_label(size),
            "num_params": n,
            "layout": layout,
            "tensors": model["tensors"],
            "methods": {},
        }
        for method in methods:
            match = {"size": size, "layout": layout, "method": method, "warmup": False}
            reps = _per_rep(ranks, kind="rep", **match)
            if not reps:
                continue
            secs = [max(r["seconds"] for r in rs) for rs in reps.values()]
            m: dict[str, Any] = {"seconds": _summary(secs)}
            if method.startswith("tenfold"):
                m.update(_tenfold_fields(reps, method, k, n))
            elif method == POWERSGD:
                sent = statistics.median(
                    max(r["powersgd"]["values_allreduced"] for r in rs) for rs in reps.values()
                )
                first_rec = next(iter(reps.values()))[0]["powersgd"]
                m["bytes_sent_per_rank"] = {
                    "max": 2 * (k - 1) / k * 4 * sent,
                    "mean": 2 * (k - 1) / k * 4 * sent,
                    "what": "computed: a ring all_reduce of the float32 values PowerSGD sends "
                    "(its P and Q factors and the uncompressed tensors, from PowerSGDState's "
                    "own count)",
                }
                m["bits_per_param"] = 32.0 * sent / n
                m["powersgd"] = {
                    "matrix_approximation_rank": first_rec["rank"],
                    "values_allreduced_per_sync": sent,
                    "how": "torch's powerSGD_hook (error feedback, warm start) on ONE "
                    "GradBucket-like flat buffer of the deltas against the shared model "
                    "(torch_baselines.py), primed past start_powerSGD_iter; result = shared "
                    "+ mean",
                }
            else:
                width = 4 if method == "float32_all_reduce" else 2
                ring = 2 * (k - 1) / k * width * n
                m["bytes_sent_per_rank"] = {
                    "max": ring,
                    "mean": ring,
                    "what": "computed: a ring all_reduce sends 2(P-1)/P of the tensor per rank",
                }
                m["bits_per_param"] = 8.0 * width
            m["cpu_seconds"] = _cpu_summary(reps, k)
            if m["cpu_seconds"] is not None:
                m["cpu_seconds"]["per_rank"] = _per_rank_medians(reps, lambda r: r["cpu_seconds"])
            m["wire_tx_bytes_per_rank"] = {
                "measured_max_over_ranks": statistics.median(
                    max(r["tx_bytes"] for r in rs) for rs in reps.values()
                )
                if dedicated
                and all(r.get("tx_bytes") is not None for rs in reps.values() for r in rs)
                else None,
                "what": "interface tx counter of each rank's own veth (frames, headers "
                "included; switch topology only: lo is shared by all ranks)",
            }
            ch = [
                next(
                    (
                        r
                        for r in recs
                        if r["kind"] == "check"
                        and r["size"] == size
                        and r["method"] == method
                        and r.get("layout") == layout
                    ),
                    None,
                )
                for recs in ranks
            ]
            if all(ch):
                m["identical_across_ranks"] = len({c["sha256"] for c in ch if c}) == 1
                m["sha256_per_rank"] = [c["sha256"] for c in ch if c]
                # Checked against the exact float32 mean (an untimed float32 all_reduce).
                m["error_vs_exact_mean"] = ch[0].get("error_vs_exact_mean") if ch[0] else None
            entry["methods"][method] = m
        ms = entry["methods"]
        f32, f16 = (
            ms.get("float32_all_reduce", {}).get("seconds"),
            ms.get("float16_all_reduce", {}).get("seconds"),
        )
        entry["ratios"] = {"float32_over_float16": _ratio(f32, f16)}
        psgd = ms.get(POWERSGD, {}).get("seconds")
        entry["per_phase_model"] = {}
        for method, m in ms.items():
            if not method.startswith("tenfold"):
                continue
            entry["ratios"][method] = {
                "float32_over_tenfold": _ratio(f32, m["seconds"]),
                "float16_over_tenfold": _ratio(f16, m["seconds"]),
                "powersgd_over_tenfold": _ratio(psgd, m["seconds"]),
            }
            entry["per_phase_model"][method] = _phase_model(ranks, size, layout, method, f32, f16)
        results.append(entry)
    out["results"] = results
    if ranks and ranks[0] and "t" in ranks[0][0]:
        # Where the launch's time went (rank 0's clock): seconds from its first record.
        t0 = ranks[0][0]["t"]
        out["timeline_rank0_seconds"] = [
            [r["kind"], r.get("size"), r.get("layout"), round(r["t"] - t0, 3)]
            for r in ranks[0]
            if r["kind"] in ("hello", "link_check", "tenfold", "model", "stopped", "done")
        ]
    stopped = [r for recs in ranks for r in recs if r["kind"] == "stopped"]
    out["complete"] = bool(ranks) and all(any(r["kind"] == "done" for r in recs) for recs in ranks)
    expected = len(cfg.sizes) * len(cfg.layouts)
    out["complete"] = out["complete"] and not stopped and len(results) == expected
    if stopped:
        out["stopped"] = stopped[0]
    return out


def _phase_model(
    ranks: Sequence[Sequence[dict[str, Any]]],
    size: int,
    layout: str,
    method: str,
    f32: dict[str, Any] | None,
    f16: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """MODEL = slowest rank's encode alone + exchange alone + slowest decode alone (medians)."""
    comm = _per_rep(ranks, kind="comm_only", size=size, layout=layout, method=method)
    single = [
        r
        for r in ranks[0]
        if r["kind"] == "single_rank"
        and r.get("layout") == layout
        and r["method"] == method
        and r["size"] == size
    ]
    skipped = next(
        (
            r
            for r in ranks[0]
            if r["kind"] == "single_rank_skipped"
            and (r["size"], r["layout"], r["method"]) == (size, layout, method)
        ),
        None,
    )
    if skipped is not None:
        return {"label": "MODEL not measured", "skipped": skipped["reason"]}
    if not comm or not single:
        return None
    comm_s = statistics.median(max(r["seconds"] for r in rs) for rs in comm.values())
    enc_s = statistics.median(max(r["encode_seconds"]) for r in single)
    dec_s = statistics.median(max(r["decode_seconds"]) for r in single)
    serial = enc_s + comm_s + dec_s
    overlapped = enc_s + max(comm_s, dec_s)

    def over(base: dict[str, Any] | None, t: float) -> float | None:
        return base["median"] / t if base and t else None

    return {
        "label": "MODEL, not a measurement of a sync: what one sync would take with a core "
        "per rank (no oversubscription). Terms: encode = the slowest of the P ranks' "
        "encodes, and decode = the slowest rank's decode-and-sum, both run by one process "
        "(SimulatedAverager, same collective/transmit/policy, one thread) while the other "
        "ranks sat idle; comm = the exchange alone (random bytes of the measured packet "
        "sizes in the collective's pattern, max over ranks); medians over reps. "
        "serial = encode + comm + decode (the slow end: no overlap); overlapped = encode + "
        "max(comm, decode) (the fast end: decoding entirely hidden behind the wire)",
        "encode_seconds_one_rank_alone": enc_s,
        "comm_seconds_exchange_alone": comm_s,
        "decode_seconds_one_rank_alone": dec_s,
        "tenfold_seconds_model": serial,
        "tenfold_seconds_model_overlapped": overlapped,
        "float32_over_tenfold_model": over(f32, serial),
        "float16_over_tenfold_model": over(f16, serial),
        "float32_over_tenfold_model_overlapped": over(f32, overlapped),
        "float16_over_tenfold_model_overlapped": over(f16, overlapped),
        "float32_over_exchange_alone": over(f32, comm_s),
        "float32_over_exchange_alone_what": "upper bound of float32/tenfold if encode and "
        "decode cost nothing (measured exchange alone)",
    }


# ---- orchestration -------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[sync-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        mem_gb = round(int(kb) / 2**20, 1)
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "numpy": version("numpy"),
        "numba": version("numba"),
        "tenfold": version("tenfold"),
    }


def _build_topology(name: str, world_size: int, shape: netns.LinkShape) -> netns.Topology:
    if name == "loopback":
        return netns.loopback(world_size)
    if name == "switch":
        return netns.build_switch(world_size=world_size, shape=shape)
    return netns.build_bus(world_size=world_size, shape=shape)


def run_key(network: str, world_size: int, rate: str | None = None) -> str:
    """The report's key of one launch, e.g. ``switch@1gbit/P2`` or ``loopback/P2``."""
    return f"{network}/P{world_size}" if rate is None else f"{network}@{rate}/P{world_size}"


def core_plan(world_size: int, pin: bool) -> tuple[int, ...]:
    """The core of each rank: rank r on usable core ``r mod cores`` (empty: not pinned)."""
    if not pin:
        return ()
    cores = sorted(os.sched_getaffinity(0))
    return tuple(cores[r % len(cores)] for r in range(world_size))


def _fingerprint(cfg: BenchConfig) -> str:
    """Hash of what a launch's numbers depend on (resume reuses only matching launches)."""
    keep = ("sizes", "collectives", "transmits", "layouts", "reps", "warmup", "seed", "model",
            "pin", "powersgd_rank", "link_check_bytes")  # fmt: skip
    d = {k: v for k, v in asdict(cfg).items() if k in keep}
    if cfg.shape.delay_ms:  # only then: the undelayed runs keep their fingerprints
        d["delay_ms"] = cfg.shape.delay_ms
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resume_path(cfg: BenchConfig, key: str) -> Path | None:
    if cfg.resume_dir is None:
        return None
    # a delayed link's launches get their own files (same key, other measurement)
    delay = f"_delay{cfg.shape.delay_ms:g}ms" if cfg.shape.delay_ms else ""
    return Path(cfg.resume_dir) / (key.replace("/", "_").replace("@", "_") + delay + ".json")


def run_benchmark(cfg: BenchConfig, command: str) -> tuple[dict[str, Any], int]:
    """Run every (network, P) launch of ``cfg``; return the report and the exit code."""
    start = time.time()
    hard_end = start + cfg.max_seconds
    report: dict[str, Any] = {
        "benchmark": "one synchronisation of P ranks: tenfold vs float32/float16 all_reduce",
        "command": command,
        "cwd": os.getcwd(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
        "machine": _machine(),
        "config": {
            **{k: v for k, v in asdict(cfg).items() if k != "shape"},
            "shape": asdict(cfg.shape),
            "backend": "gloo (CPU)",
            "compute_threads_per_rank": 1,
            "policies": {
                "delta": "tenfold.TargetRate(bits_per_param=tenfold.train.config.DEFAULT_RATE)",
                "weights": "tenfold.EntropyAdaptive() (defaults)",
            },
            "plan_order": [run_key(n, p, r) for n, r, p in cfg.launches()],
        },
        "method": {
            "timing": "per repetition: dist.barrier(), then each rank's wall time of the "
            "operation; the repetition's time is the max over ranks; median/min/max over "
            "repetitions, after warm-up; methods interleaved within each repetition; "
            "delta mode restores the local weights and the averager's state (saved after "
            "initialize(shared)) before every repetition, untimed",
            "tenfold": "CompressedAverager(policy, transmit=T, collective=C, threads=1)"
            ".average(params); see tenfold.distributed.averaging/collectives for the protocols",
            "float32_all_reduce": "dist.all_reduce(p) per tensor in place, then p /= P",
            "float16_all_reduce": "h = p.half(); dist.all_reduce(h); p.copy_(h); p /= P",
            "models": "layout 'model': 4 weight matrices (45/30/15/10% of n) + 4 biases; "
            "'single': the same values as one flat tensor. Laplacian bulk (scale "
            "0.05/0.04/0.03/0.02), 1e-4 outliers (Laplace 8x scale), per-rank Laplacian "
            "drift (0.1x scale); biases Laplace(0, 0.01); shared model = without the drift",
        },
        "runs": {},
    }
    cores = report["machine"]["usable_cores"] or 1
    report["oversubscription"] = {
        str(p): f"{p} ranks on {cores} usable cores: CPU-bound phases (encode/decode) run "
        f"~{p / cores:.1f}x slower than with a core per rank"
        if p > cores
        else f"{p} ranks on {cores} cores: not oversubscribed"
        for p in cfg.world_sizes
    }
    code = EXIT_OK
    launches = cfg.launches()
    with tempfile.TemporaryDirectory(prefix="tfsync-") as tmp:
        for i, (name, rate, p) in enumerate(launches):
            key = run_key(name, p, rate)
            saved_path = _resume_path(cfg, key)
            if saved_path is not None and saved_path.exists():
                saved = json.loads(saved_path.read_text())
                if saved.get("complete") and saved.get("fingerprint") == _fingerprint(cfg):
                    _log(f"{key}: reusing {saved_path} (complete, same configuration)")
                    report["runs"][key] = {**saved, "resumed_from": str(saved_path)}
                    continue
            remaining = hard_end - time.time() - _TEARDOWN_MARGIN_S
            # A launch's work grows ~linearly with P: its share of what is left is too.
            share = remaining * p / sum(q for _, _, q in launches[i:])
            if share < 10:
                report["runs"][key] = {
                    "network": name,
                    "world_size": p,
                    "skipped": "time budget (--max-seconds) exhausted",
                }
                code = EXIT_FAILED
                continue
            _log(f"{key}: building (budget {share:.0f} s)")
            load_before = os.getloadavg()
            topology = _build_topology(name, p, cfg.shape_for(rate or cfg.rates[0]))
            _LIVE_TOPOLOGIES.append(topology)
            try:
                work = Path(tmp) / key.replace("/", "_")
                work.mkdir()
                wcfg = WorkerConfig(
                    network=name,
                    world_size=p,
                    init_method=f"file://{work / 'rendezvous'}",
                    sizes=cfg.sizes,
                    layouts=cfg.layouts,
                    collectives=cfg.collectives,
                    transmits=cfg.transmits,
                    reps=cfg.reps,
                    warmup=cfg.warmup,
                    seed=cfg.seed,
                    link_check_bytes=cfg.link_check_bytes,
                    model=cfg.model,
                    deadline=time.time() + share - 5,
                    timeout_s=max(30.0, min(600.0, share)),
                    ifnames=tuple(pl.ifname for pl in topology.placements),
                    out_dir=str(work),
                    cpus=core_plan(p, cfg.pin),
                    powersgd_rank=cfg.powersgd_rank,
                )
                hard = min(time.time() + share + 10, hard_end - _TEARDOWN_MARGIN_S / 2)
                launch = _launch(wcfg, topology, work, hard)
                ranks = _read_records(work, p)
                net = aggregate_network(ranks, topology=topology, cfg=cfg, network=name,
                                        world_size=p)  # fmt: skip
                net["returncodes"] = launch.returncodes
                if launch.timed_out:
                    net["error"] = "killed at the time budget (--max-seconds)"
                    code = EXIT_FAILED
                elif any(c != 0 for c in launch.returncodes):
                    bad = next(i for i, c in enumerate(launch.returncodes) if c != 0)
                    tail = launch.logs[bad].read_text(errors="replace")[-3000:]
                    net["error"] = f"rank {bad} exited with {launch.returncodes[bad]}: {tail}"
                    code = EXIT_FAILED
                elif not net["complete"]:
                    code = EXIT_FAILED
                # Other work on the machine inflates CPU-bound phases: record how busy it was.
                net["loadavg_1_5_15min"] = {"before": load_before, "after": os.getloadavg()}
                net["cores"] = _core_label(p, cfg.pin)
                net["fingerprint"] = _fingerprint(cfg)
                report["runs"][key] = net
                if saved_path is not None:
                    saved_path.parent.mkdir(parents=True, exist_ok=True)
                    saved_path.write_text(json.dumps(net, indent=1) + "\n")
                _log(f"{key}: done ({'complete' if net['complete'] else 'partial'})")
            finally:
                _stop(_LIVE_PROCS)  # ranks still inside would keep a deleted namespace alive
                _LIVE_PROCS.clear()
                _LIVE_TOPOLOGIES.remove(topology)
                for err in netns.teardown(topology):
                    _log(f"teardown: {err}")
    if cfg.memory and time.time() < hard_end - _TEARDOWN_MARGIN_S - 30:
        report["memory"] = _memory(cfg, hard_end)
    report["summary"] = _summary_rows(report)
    report["scaling_vs_P"] = _scaling_vs_p(report["summary"])
    report["target"] = _target(report, cfg)
    report["elapsed_seconds"] = time.time() - start
    return report, code


def _core_label(p: int, pin: bool) -> dict[str, Any]:
    """How the P ranks sat on the cores: pinned one per core, or CPU-shared (labelled)."""
    cores = len(os.sched_getaffinity(0))
    shared = p > cores
    return {
        "usable_cores": cores,
        "pinned": pin,
        "core_per_rank": core_plan(p, pin) or None,
        "cpu_shared": shared,
        "label": (
            f"CPU-SHARED: {p} ranks on {cores} cores (CPU-bound phases ~{p / cores:.1f}x slower "
            "than with a core per rank)"
            if shared
            else f"a core per rank ({'pinned' if pin else 'not pinned'})"
        ),
    }


def _memory(cfg: BenchConfig, hard_end: float) -> dict[str, Any]:
    """sync_memory.py's measurement on loopback (its own launches), bounded by the budget."""
    memory_path = _resume_path(cfg, f"memory/{_size_label(cfg.memory_size)}")
    if memory_path is not None and memory_path.exists():
        saved = json.loads(memory_path.read_text())
        if all("error" not in v for v in saved.get("variants", {}).values()):
            return {**saved, "resumed_from": str(memory_path)}
    topology = netns.loopback(cfg.memory_world_size)
    layout = "transformer" if "transformer" in cfg.layouts else cfg.layouts[0]
    out = sync_memory.measure(
        launch=_launch,
        read=_read_records,
        topology=topology,
        size=cfg.memory_size,
        layout=layout,
        seed=cfg.seed,
        timeout_s=max(60.0, min(900.0, hard_end - time.time() - _TEARDOWN_MARGIN_S)),
        log=_log,
    )
    if memory_path is not None:
        memory_path.parent.mkdir(parents=True, exist_ok=True)
        memory_path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per (network, P, size, layout, tenfold method): what scaling.py fits."""
    rows = []
    cores = report["machine"].get("usable_cores") or 1
    for net in report["runs"].values():
        shaping = net.get("shaping") or {}
        for e in net.get("results", []):
            ms = e["methods"]

            def med(method: str, ms: dict[str, Any] = ms) -> float | None:
                s = ms.get(method, {}).get("seconds")
                return s["median"] if s else None

            for method, m in ms.items():
                if not method.startswith("tenfold"):
                    continue
                model = e["per_phase_model"].get(method) or {}
                cpu = m.get("phases_cpu_seconds_per_rank") or {}
                rows.append(
                    {
                        "network": net["network"],
                        "world_size": net["world_size"],
                        "usable_cores": cores,
                        "rate": shaping.get("rate"),
                        "size": e["size"],
                        "num_params": e["num_params"],
                        "layout": e["layout"],
                        "method": method,
                        "collective": m["collective"],
                        "transmit": m["transmit"],
                        "float32_s": med("float32_all_reduce"),
                        "float16_s": med("float16_all_reduce"),
                        "powersgd_s": med(POWERSGD),
                        "tenfold_s": med(method),
                        "float32_over_tenfold": e["ratios"][method]["float32_over_tenfold"],
                        "float16_over_tenfold": e["ratios"][method]["float16_over_tenfold"],
                        "powersgd_over_tenfold": e["ratios"][method].get("powersgd_over_tenfold"),
                        "cpu_shared": (net.get("cores") or {}).get("cpu_shared"),
                        "bits_per_param": m["bits_per_param"],
                        "bytes_sent_per_rank_max": m["bytes_sent_per_rank"]["max"],
                        "values_encoded_per_rank_max": m["values_per_rank"]["encoded_max"],
                        "values_decoded_per_rank_max": m["values_per_rank"]["decoded_max"],
                        "values_source": m["values_per_rank"]["source"],
                        "phases_s": {
                            ph: v["median"]
                            for ph, v in m["phases_seconds"].items()
                            if isinstance(v, dict) and "median" in v
                        },
                        "phases_cpu_s_max_over_ranks": {
                            ph: max(v) for ph, v in cpu.items() if isinstance(v, list)
                        }
                        or None,
                        "cpu_s_per_rank_max": (m.get("cpu_seconds") or {}).get(
                            "per_rank_max_median"
                        ),
                        "tenfold_model_s": model.get("tenfold_seconds_model"),
                        "tenfold_model_overlapped_s": model.get("tenfold_seconds_model_overlapped"),
                        "float32_over_tenfold_model": model.get("float32_over_tenfold_model"),
                        "float16_over_tenfold_model": model.get("float16_over_tenfold_model"),
                    }
                )
    return rows


def _scaling_vs_p(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (network, size, layout, method): bytes sent and values decoded per rank against P.

    ``*_over_n`` divide by the parameter count (bytes: per coded parameter at the measured
    rate); ``max_over_min_across_P`` is the spread over the measured P: reduce-scatter's
    should stay near 1 (flat), all-gather's grows ~P.
    """
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["network"], r["size"], r["layout"], r["method"]), []).append(r)
    out = []
    for (network, size, layout, method), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["world_size"])
        n = rs[0]["num_params"]
        sent = [r["bytes_sent_per_rank_max"] / n for r in rs]
        dec = [r["values_decoded_per_rank_max"] / n for r in rs]

        def spread(v: Sequence[float]) -> float | None:
            return max(v) / min(v) if v and min(v) > 0 else None

        out.append(
            {
                "network": network,
                "size": size,
                "layout": layout,
                "method": method,
                "P": [r["world_size"] for r in rs],
                "bytes_sent_per_rank_over_n": sent,
                "values_decoded_per_rank_over_n": dec,
                "bytes_max_over_min_across_P": spread(sent),
                "decoded_max_over_min_across_P": spread(dec),
                "values_source": rs[0]["values_source"],
                "float32_over_tenfold": [r["float32_over_tenfold"] for r in rs],
                "float16_over_tenfold": [r["float16_over_tenfold"] for r in rs],
            }
        )
    return out


# The targets (issue 19: P = 2, 25M, 1 Gbit/s switch, delta at the default rate).
TARGETS: dict[str, dict[str, Any]] = {
    "switch": {"layouts": ("transformer", "model", "single"), "float32": 6.0, "float16": 3.0},
}


def _target(report: dict[str, Any], cfg: BenchConfig) -> dict[str, Any]:
    """Met/missed per layout and collective, with the numbers (never hard-coded)."""
    out: dict[str, Any] = {
        "what": f"P={HEADLINE_P} ranks, 25M parameters, {HEADLINE_RATE} switch (a shaped "
        "full-duplex link per rank), transmit=delta with TargetRate(DEFAULT_RATE): "
        "float32/tenfold >= 6 and float16/tenfold >= 3 (median wall times, same run)",
    }
    if (
        HEADLINE_RATE not in [r.lower() for r in cfg.rates]
        or HEADLINE_SIZE not in cfg.sizes
        or HEADLINE_P not in cfg.world_sizes
        or "delta" not in cfg.transmits
    ):
        out["evaluated"] = False
        out["why_not"] = (
            f"needs {HEADLINE_RATE} in --rates, 25M in --sizes, {HEADLINE_P} in --world-sizes, delta"
        )
        return out
    out["evaluated"] = True
    for network, want in TARGETS.items():
        if network not in cfg.networks:
            continue
        verdicts = []
        for r in report["summary"]:
            if (
                r["network"] != network
                or (r.get("rate") or "").lower() != HEADLINE_RATE
                or r["world_size"] != HEADLINE_P
                or r["size"] != "25M"
                or r["transmit"] != "delta"
                or r["layout"] not in want["layouts"]
            ):
                continue
            r32, r16 = r["float32_over_tenfold"], r["float16_over_tenfold"]
            met32 = r32 is not None and r32 >= want["float32"]
            met16 = want["float16"] is None or (r16 is not None and r16 >= want["float16"])
            verdicts.append(
                {
                    "layout": r["layout"],
                    "collective": r["collective"],
                    "tenfold_s": r["tenfold_s"],
                    "float32_s": r["float32_s"],
                    "float16_s": r["float16_s"],
                    "powersgd_s": r.get("powersgd_s"),
                    "float32_over_tenfold": r32,
                    "float16_over_tenfold": r16,
                    "powersgd_over_tenfold": r.get("powersgd_over_tenfold"),
                    "cpu_shared": r.get("cpu_shared"),
                    "met": met32 and met16,
                    "model_one_core_per_rank": {
                        "label": "MODEL (per-phase, one core per rank), not a measurement",
                        "float32_over_tenfold": r["float32_over_tenfold_model"],
                        "float16_over_tenfold": r["float16_over_tenfold_model"],
                    },
                }
            )
        out[network] = {
            "thresholds": {"float32": want["float32"], "float16": want["float16"]},
            "cases": verdicts,
            "met": any(v["met"] for v in verdicts) if verdicts else None,
        }
    return out


# ---- command line --------------------------------------------------------------------------


def _parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 25M, 500k, 1000)") from None


def _csv(text: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (the ``--worker-*`` options are internal)."""
    p = argparse.ArgumentParser(
        description="Time one weight synchronisation among P ranks: tenfold (all-gather and "
        "reduce-scatter, delta and weights) vs float32/float16 all_reduce, over loopback and "
        "1 Gbit/s links in network namespaces. Prints JSON."
    )
    p.add_argument(
        "--smoke",
        "--quick",
        action="store_true",
        help="tiny sizes, loopback, P=2,3, 1 rep, memory at 100k (for CI; untimed)",
    )
    p.add_argument("--sizes", help="comma-separated parameter counts (default 25M,1M)")
    p.add_argument(
        "--networks", help=f"comma-separated subset of {','.join(NETWORKS)} (default: all)"
    )
    p.add_argument("--world-sizes", help="comma-separated rank counts P (default 2,4,8)")
    p.add_argument("--world-size", type=int, help="one P (shorthand for --world-sizes P)")
    p.add_argument("--collectives", help=f"subset of {','.join(COLLECTIVES)} (default: both)")
    p.add_argument("--transmit", help=f"subset of {','.join(TRANSMITS)} (default: both)")
    p.add_argument("--layouts", help=f"subset of {','.join(LAYOUTS)} (default: both)")
    p.add_argument("--reps", type=int, help="measured repetitions (default 3; smoke 1)")
    p.add_argument("--warmup", type=int, help="warm-up repetitions (default 1; smoke 0)")
    p.add_argument(
        "--max-seconds", type=float, help="bound on the whole run (default 1800; smoke 180)"
    )
    p.add_argument("--rate", help="tbf rate of shaped links (one; default 1gbit)")
    p.add_argument(
        "--rates", help="comma-separated tbf rates, one launch each (e.g. 100mbit,1gbit,10gbit)"
    )
    p.add_argument(
        "--burst", default="256kb", help="tbf burst (default 256kb; at least 2 ms of the rate)"
    )
    p.add_argument("--latency", default="20ms", help="tbf queue bound (default 20ms)")
    p.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="one-way propagation delay between the switch's ranks, ms (default 0: none)",
    )
    p.add_argument(
        "--link-check-mb",
        type=float,
        help="MB of the raw rank 0->1 transfer (default 100; smoke 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic models")
    p.add_argument(
        "--model",
        action="store_true",
        help="also measure the per-phase MODEL (one rank coding all P models alone); off by "
        "default since the ranks are pinned to their own cores",
    )
    p.add_argument("--no-model", action="store_true", help=argparse.SUPPRESS)  # the default
    p.add_argument("--no-pin", action="store_true", help="do not pin rank r to core r mod cores")
    p.add_argument(
        "--powersgd-rank", type=int, default=4, help="PowerSGD rank (0: no PowerSGD baseline)"
    )
    p.add_argument("--memory", action="store_true", help="also measure host memory (RSS)")
    p.add_argument("--memory-size", help="parameters of the memory model (default 25M)")
    p.add_argument(
        "--resume-dir", type=Path, help="keep each launch's JSON here; reuse complete ones"
    )
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    p.add_argument("--worker-config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-rank", type=int, help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A validated :class:`BenchConfig` from parsed options (``--smoke`` sets the defaults)."""
    sizes = (
        tuple(_parse_size(s) for s in args.sizes.split(","))
        if args.sizes
        else (SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    )
    networks = _csv(args.networks) or (("loopback",) if args.smoke else NETWORKS)
    if args.world_sizes and args.world_size:
        raise ValueError("world_sizes: give --world-sizes or --world-size, not both")
    try:
        world_sizes = (
            tuple(int(x) for x in _csv(args.world_sizes) or ())
            or ((args.world_size,) if args.world_size else ())
            or (SMOKE_WORLD_SIZES if args.smoke else DEFAULT_WORLD_SIZES)
        )
    except ValueError:
        raise ValueError(f"world_sizes: not integers: {args.world_sizes!r}") from None
    link_mb = args.link_check_mb if args.link_check_mb is not None else (1 if args.smoke else 100)
    if args.rate and args.rates:
        raise ValueError("rates: give --rate or --rates, not both")
    rates = _csv(args.rates) or ((args.rate,) if args.rate else DEFAULT_RATES)
    memory_size = (
        _parse_size(args.memory_size)
        if args.memory_size
        else 100_000
        if args.smoke
        else HEADLINE_SIZE
    )
    return BenchConfig(
        world_sizes=world_sizes,
        sizes=sizes,
        networks=networks,
        collectives=_csv(args.collectives) or COLLECTIVES,
        transmits=_csv(args.transmit) or TRANSMITS,
        layouts=_csv(args.layouts) or (SMOKE_LAYOUTS if args.smoke else LAYOUTS),
        reps=args.reps if args.reps is not None else (1 if args.smoke else 3),
        warmup=args.warmup if args.warmup is not None else (0 if args.smoke else 1),
        max_seconds=args.max_seconds or (300.0 if args.smoke else 1800.0),
        link_check_bytes=int(link_mb * 1_000_000),
        seed=args.seed,
        model=args.model and not args.no_model,
        shape=netns.LinkShape(
            rate=rates[0], burst=args.burst, latency=args.latency, delay_ms=args.delay
        ),
        rates=rates,
        pin=not args.no_pin,
        powersgd_rank=args.powersgd_rank,
        memory=args.memory or args.smoke,
        memory_size=memory_size,
        resume_dir=str(args.resume_dir) if args.resume_dir else None,
    )


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, run, print the JSON report; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker_config is not None:
        return worker_main(args.worker_config, args.worker_rank)
    try:
        cfg = config_from_args(args)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.print_usage(sys.stderr)
        print(f"sync.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if any(n != "loopback" for n in cfg.networks):
        reason = netns.netns_available()
        if reason:
            print(f"sync.py: error: {reason}", file=sys.stderr)
            return EXIT_USAGE
        for ns in netns.cleanup_stale():
            _log(f"deleted stale namespace {ns} (its run is gone)")
    command = shlex.join([sys.executable, *sys.argv])
    atexit.register(_cleanup_all)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        report, code = run_benchmark(cfg, command)
    except KeyboardInterrupt:
        _cleanup_all()
        print("sync.py: interrupted; ranks stopped, namespaces deleted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except netns.NetnsError as exc:
        _cleanup_all()
        print(f"sync.py: error: cannot build the network: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        _cleanup_all()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    nets = report["runs"].values()
    if any(not n.get("tenfold", {}).get("available", False) for n in nets if "results" in n):
        why = next((n["tenfold"].get("error") for n in nets if "tenfold" in n), "unknown reason")
        _log(f"NOTE: the tenfold path is unavailable ({why}); only the baselines were timed")
    return code


if __name__ == "__main__":
    sys.exit(main())
