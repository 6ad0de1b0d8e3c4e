"""torch's PowerSGD DDP hook applied to a list of tensors, outside DDP, for one sync.

``powerSGD_hook(state, bucket)`` is torch's own code (``torch.distributed.algorithms.
ddp_comm_hooks.powerSGD_hook``); DDP hands it a ``GradBucket``. Here the bucket is
:class:`FlatBucket`, a stand-in with the four methods the hook calls (``buffer``,
``gradients``, ``index``, ``is_last``): ONE bucket holding every tensor as views of one flat
float32 buffer, which is what DDP builds for a model under ``bucket_cap_mb``. What is
averaged is the delta against the shared model (``w - w_shared``), as tenfold's delta mode
does, with PowerSGD's own error feedback and warm start; the result is ``w_shared + mean``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FlatBucket:
    """The part of ``torch.distributed.GradBucket`` that ``powerSGD_hook`` uses.

    Args:
        shapes: the tensors' shapes, in order; their values live in one flat buffer.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]]) -> None:
        import math

        import torch

        sizes = [math.prod(s) for s in shapes]
        self._buffer = torch.zeros(sum(sizes), dtype=torch.float32)
        self._views = []
        offset = 0
        for shape, size in zip(shapes, sizes, strict=True):
            self._views.append(self._buffer[offset : offset + size].view(shape))
            offset += size

    def buffer(self) -> Any:
        """The flat float32 buffer (all tensors, concatenated)."""
        return self._buffer

    def gradients(self) -> list[Any]:
        """Per tensor, a view of :meth:`buffer` with its shape."""
        return self._views

    def index(self) -> int:
        """Bucket index (one bucket: 0)."""
        return 0

    def is_last(self) -> bool:
        """One bucket per sync: it is the last (advances PowerSGD's iteration counter)."""
        return True


class PowerSGDSync:
    """Average ``params`` in place across ranks with torch's PowerSGD hook on their deltas.

    Args:
        params: the rank's float32 tensors (updated in place).
        shared: the shared reference, same shapes (delta = param - shared).
        rank: PowerSGD's ``matrix_approximation_rank``.
        start_iter: PowerSGD's ``start_powerSGD_iter`` (plain all-reduce before it; call
            :meth:`prime` to pass it untimed).
    """

    def __init__(
        self, params: Sequence[Any], shared: Sequence[Any], *, rank: int = 4, start_iter: int = 2
    ) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

        self._hook = powerSGD_hook.powerSGD_hook
        self.state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=rank,
            start_powerSGD_iter=start_iter,
            use_error_feedback=True,
            warm_start=True,
        )
        self.params, self.shared = list(params), list(shared)
        self.bucket = FlatBucket([tuple(p.shape) for p in self.params])
        self.last_values_sent = 0

    def prime(self) -> None:
        """Run until PowerSGD compresses (its first ``start_iter`` calls are all-reduces)."""
        while self.state.iter < self.state.start_powerSGD_iter:
            self()

    def __call__(self) -> dict[str, Any]:
        """One sync; returns the float32 values this rank all-reduced (P and Q, uncompressed)."""
        import torch

        for p, s, v in zip(self.params, self.shared, self.bucket.gradients(), strict=True):
            torch.sub(p, s, out=v)
        before = self.state.total_numel_after_compression
        compressing = self.state.iter >= self.state.start_powerSGD_iter
        out = self._hook(self.state, self.bucket).wait()  # type: ignore[arg-type]
        flat = out[0] if isinstance(out, list | tuple) else out
        offset = 0
        for p, s in zip(self.params, self.shared, strict=True):
            n = p.numel()
            torch.add(s, flat[offset : offset + n].view(p.shape), out=p)
            offset += n
        sent = self.state.total_numel_after_compression - before
        self.last_values_sent = int(sent) if compressing else int(flat.numel())
        return {
            "values_allreduced": self.last_values_sent,
            "compressing": compressing,
            "rank": self.state.matrix_approximation_rank,
        }
