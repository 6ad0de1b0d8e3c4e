"""What LocalSGD and a bare CompressedAverager keep between syncs (delta mode, all-gather,
2 gloo ranks): the shared reference and the error-feedback residual, one model each in
float32, and nothing else model-sized; a sync's own buffers are chunk-sized. DiLoCo forms
its pseudo-gradient in the averager's reference (no copy of the shared model), bit for
bit what the path through a copy computes.

Counted with tracemalloc (numpy registers its buffers with it), after a warm-up that
compiles the kernels, so the numbers are bytes, not timings.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from gloo_group import join_gloo

import tenfold
from tenfold.distributed import CompressedAverager, LocalSGD

WORLD = 2
SYNCS = 3
#: chunks of 32k values (128 KB): the 2M-value model below is 62 chunks, its largest
#: tensor split into pieces
CHUNK = 1 << 15


def _model(rank: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(7 + rank)
    m = torch.nn.Module()
    for name, shape in (("emb", (1000, 1024)), ("w1", (512, 1024)), ("w2", (1024, 400))):
        m.register_parameter(name, torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.02))
    m.register_parameter("b", torch.nn.Parameter(torch.zeros(1000)))
    return m


def _drift(model: torch.nn.Module, rank: int, round_: int) -> None:
    g = torch.Generator().manual_seed(100 * round_ + rank)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-3)


def _averager() -> CompressedAverager:
    return CompressedAverager(tenfold.TargetRate(bits_per_param=1.0), chunk_values=CHUNK)


def _outer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)


def _diloco_on_ranks(rank: int, *, in_place: bool) -> list[str]:
    """DiLoCo over this rank's model: the parameters' digest after each sync; in place
    (a copy of the shared model raises) or through the copy (the path CUDA takes)."""
    model = _model(rank)
    sync = LocalSGD(model, sync_every=1, averager=_averager(), outer_optimizer=_outer(model))

    def no_copy(*_: Any) -> Any:
        raise AssertionError("blocking DiLoCo copied the shared model")

    if in_place:
        sync._shared_model = no_copy  # type: ignore[method-assign]
    else:
        sync._reference_for_gradient = lambda: None  # type: ignore[method-assign]
    digests = []
    for r in range(SYNCS):
        _drift(model, rank, 20 + r)
        sync.step()
        digests.append(_digest(model))
    return digests


def _digest(model: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()


def _measure(kind: str, model: torch.nn.Module, rank: int) -> dict[str, Any]:
    """Traced bytes after SYNCS syncs (current) and during them (peak), over the model's."""
    named = list(model.named_parameters())
    gc.collect()
    tracemalloc.start()
    try:
        if kind == "localsgd":
            sync = LocalSGD(model, sync_every=1, averager=_averager())
            avg = sync.averager
            step = sync.step
        else:
            avg = _averager()
            avg.initialize([(n, p.detach()) for n, p in named])

            def step() -> Any:
                return avg.average([(n, p.detach()) for n, p in named])

        built, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        peaks: list[int] = []
        for r in range(SYNCS):
            _drift(model, rank, 10 + r)
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            step()
            after, peak = tracemalloc.get_traced_memory()
            # over what the sync started and ended with (the first one creates the residual)
            peaks.append(peak - max(before, after))
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(avg, CompressedAverager)
    model_bytes = 4 * sum(p.numel() for _, p in named)
    return {
        "built_x": built / model_bytes,
        "steady_x": current / model_bytes,
        "transient_x": max(peaks) / model_bytes,
        "transient_chunks": max(peaks) / (4 * CHUNK),
        "pooled": avg._pool.pooled_bytes + avg._shard_pool.pooled_bytes,
        "protocol": avg._protocol,
    }


def _memory_job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv, timeout_s=120.0)
    model = _model(rank)
    # warm-up: the kernels these chunks use get compiled (their memory is the process's)
    warm = LocalSGD(model, sync_every=1, averager=_averager())
    for r in range(2):
        _drift(model, rank, r)
        warm.step()
    del warm
    result: dict[str, Any] = {
        kind: _measure(kind, model, rank) for kind in ("localsgd", "averager")
    }
    result["diloco"] = {
        "in_place": _diloco_on_ranks(rank, in_place=True),
        "copy": _diloco_on_ranks(rank, in_place=False),
    }
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
    tenfold.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("memory")
    mp.spawn(_memory_job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("kind", ["localsgd", "averager"])
def test_keeps_the_reference_and_the_residual_only(
    measured: list[dict[str, Any]], kind: str
) -> None:
    for rank in measured:
        m = rank[kind]
        assert m["protocol"] == "all-gather"
        # initialize(): the reference, one model in float32, and nothing else
        assert m["built_x"] == pytest.approx(1.0, abs=0.02)
        # after the syncs: + the residual; no pooled accumulator, packet or chunk kept
        assert m["steady_x"] == pytest.approx(2.0, abs=0.02)
        assert m["pooled"] == 0


@pytest.mark.parametrize("kind", ["localsgd", "averager"])
def test_a_sync_adds_chunk_sized_buffers_only(measured: list[dict[str, Any]], kind: str) -> None:
    # the pipeline holds a few chunks' arrays at a time (values, own decoding, the
    # accumulator, the packets), never a model-sized temporary
    for rank in measured:
        assert rank[kind]["transient_chunks"] <= 24, rank[kind]
        assert rank[kind]["transient_x"] <= 0.5, rank[kind]


def test_diloco_forms_its_pseudo_gradient_in_place_bit_for_bit(
    measured: list[dict[str, Any]],
) -> None:
    # in place: no copy of the shared model was made (it raises there); the same bits
    for rank in measured:
        assert rank["diloco"]["in_place"] == rank["diloco"]["copy"]
    assert measured[0]["diloco"]["in_place"] == measured[1]["diloco"]["in_place"]
