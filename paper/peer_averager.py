"""Run a peer method (fp16, int8, top-k, PowerSGD...) in the trainer, like tenfold's own averager.

:class:`PeerAverager` has the interface the training loop uses from
:class:`~tenfold.distributed.SimulatedAverager` (``average(workers) -> list[SyncStats]``,
``initialize``, ``round``, ``transmit``, ``state_dict``), so a sweep can put every method on
the same task, data, workers and schedule. Like tenfold's delta mode, every worker sends its
pseudo-gradient against the shared model, optionally plus an error-feedback residual; the
peer's :class:`~paper.peers.GroupCodec` decides what travels and what it costs;
every worker continues from ``w_shared + mean``.

Example::

    avg = PeerAverager(TopK(fraction=0.03), error_feedback=True)
    avg.initialize([m.named_parameters() for m in models])
    stats = avg.average([m.named_parameters() for m in models])
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from paper.peers import GroupCodec
from tenfold.distributed.errors import NonFiniteWeightsError
from tenfold.distributed.params import ParamsLike, named_tensors
from tenfold.distributed.stats import SyncStats, TensorStats

__all__ = ["PeerAverager"]


def _arrays(named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {n: t.detach().to("cpu", torch.float32).numpy().copy() for n, t in named}


class PeerAverager:
    """K simulated workers synchronised through a peer codec, on pseudo-gradients.

    Args:
        codec: the peer method (its ``round`` sees every worker's input at once, so
            collectives such as PowerSGD's all-reduces of P and Q are modelled exactly).
        error_feedback: add each worker's residual (input minus what it became on the
            wire) to its next input, as DGC, SparseLoCo and PowerSGD do.

    Attributes:
        round: the next synchronisation's index.
        transmit: always ``"delta"``.
    """

    transmit = "delta"

    def __init__(self, codec: GroupCodec, *, error_feedback: bool = True) -> None:
        self.codec = codec
        self.error_feedback = error_feedback
        self.round = 0
        self._reference: dict[str, np.ndarray] | None = None
        self._residuals: list[dict[str, np.ndarray] | None] = []

    def initialize(self, workers: Sequence[ParamsLike]) -> int:
        """Take worker 0's weights as the shared model and copy them into every worker."""
        named = [named_tensors(w) for w in workers]
        with torch.no_grad():
            for other in named[1:]:
                for (_, dst), (_, src) in zip(other, named[0], strict=True):
                    dst.copy_(src)
        self._reference = _arrays(named[0])
        self._residuals = [None] * len(named)
        return 0

    def state_dict(self) -> dict[str, Any]:
        """Round, reference, residuals and the codec's own state (e.g. PowerSGD's Q)."""
        return {
            "round": self.round,
            "reference": self._reference,
            "residuals": self._residuals,
            "codec": self.codec.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.round = int(state["round"])
        self._reference = state["reference"]
        self._residuals = list(state["residuals"])
        self.codec.load_state_dict(state["codec"])

    def average(
        self,
        workers: Sequence[ParamsLike],
        *,
        grad_rms: Sequence[Mapping[str, float] | None] | None = None,
    ) -> list[SyncStats]:
        """One synchronisation of every worker, in place; one :class:`SyncStats` each.

        Raises:
            NonFiniteWeightsError: a worker's weights hold NaN or Inf.
        """
        named = [named_tensors(w) for w in workers]
        k = len(named)
        if self._reference is None:
            self.initialize(workers)
        assert self._reference is not None
        round_ = self.round
        self.round += 1
        inputs: list[dict[str, np.ndarray]] = []
        for r, tensors in enumerate(named):
            host = _arrays(tensors)
            bad = [n for n, a in host.items() if not np.isfinite(a).all()]
            if bad:
                raise NonFiniteWeightsError({r: -1}, [f"worker {r}: {n}" for n in bad])
            x = {n: np.subtract(a, self._reference[n]) for n, a in host.items()}
            residual = self._residuals[r]
            if self.error_feedback and residual is not None:
                x = {n: np.add(a, residual[n]) for n, a in x.items()}
            inputs.append(x)
        t0 = time.perf_counter()
        result = self.codec.round(inputs, round=round_)
        seconds = time.perf_counter() - t0
        for name, ref in self._reference.items():
            np.add(ref, result.mean[name], out=ref)
        with torch.no_grad():
            for tensors in named:
                for name, t in tensors:
                    t.copy_(torch.from_numpy(self._reference[name]))
        if self.error_feedback:
            self._residuals = [
                {n: np.subtract(x[n], recon[n]) for n in x}
                for x, recon in zip(inputs, result.reconstructions, strict=True)
            ]
        n_values = sum(a.size for a in self._reference.values())
        sizes = tuple(int(b) for b in result.bytes_per_rank)
        return [
            SyncStats(
                world_size=k,
                rank=r,
                round=round_,
                # what rank r puts on the wire around the all-gather ring: its own
                # packet and every packet it forwards (all but its predecessor's), as
                # SyncStats.bytes_sent counts for tenfold's own averagers
                bytes_sent=sum(sizes) - sizes[(r - 1) % k] if k > 1 else 0,
                bytes_received=sum(sizes) - sizes[r],
                packet_bytes=sizes,
                num_values=n_values,
                bits_per_param=8.0 * sizes[r] / n_values,
                quantized_bits_per_param=8.0 * sizes[r] / n_values,
                tensors=tuple(
                    TensorStats(
                        name=n,
                        shape=tuple(a.shape),
                        num_values=int(a.size),
                        bits=0,
                        entropy=None,
                        nbytes=0,
                        bits_per_param=0.0,
                        grad_rms=None,
                        mode=self.codec.id,
                    )  # fmt: skip
                    for n, a in self._reference.items()
                ),
                encode_seconds=seconds / k,
                comm_seconds=0.0,
                decode_seconds=0.0,
            )
            for r in range(k)
        ]
