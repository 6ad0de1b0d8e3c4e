"""Every error the distributed layer raises on purpose, under :class:`tenfold.TenfoldError`.

Each keeps the built-in parent users already catch (``RuntimeError`` for failures of a
synchronisation, ``ValueError`` for states that do not fit). Most are raised on every rank
alike, at the same collective: the group agrees on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from tenfold.errors import TenfoldError

__all__ = [
    "STATUS_NONFINITE",
    "BucketMismatchError",
    "BufferMismatchError",
    "CommunicationError",
    "ContributionRatioError",
    "NonFiniteGradientsError",
    "NonFiniteWeightsError",
    "PeerStatusError",
    "ProcessGroupError",
    "ReferenceMismatchError",
]

#: Size sent instead of a payload length by a rank whose weights are not finite.
STATUS_NONFINITE = -1

_STATUS_TEXT = {STATUS_NONFINITE: "has non-finite weights (NaN or Inf)"}


class ProcessGroupError(TenfoldError, RuntimeError):
    """No initialised process group where one is needed (see
    :func:`tenfold.distributed.process_group.require_process_group`)."""


class CommunicationError(TenfoldError, RuntimeError):
    """A collective failed: a peer died (connection closed/reset) or the timeout expired.

    The message keeps the backend's own reason, without its source path and boilerplate.
    """


class PeerStatusError(TenfoldError, RuntimeError):
    """One or more ranks reported a failure status instead of a payload.

    Raised on *every* rank, so all of them stop at the same collective. ``statuses`` maps
    the group rank to its (negative) status code.
    """

    def __init__(self, statuses: dict[int, int]) -> None:
        self.statuses = dict(statuses)
        parts = [
            f"rank {r} {_STATUS_TEXT.get(code, f'reported status {code}')}"
            for r, code in sorted(statuses.items())
        ]
        super().__init__("synchronisation aborted: " + "; ".join(parts))


class NonFiniteWeightsError(PeerStatusError):
    """Weights were NaN/Inf before a synchronisation (training diverged).

    Raised on every rank (or for the whole simulated group). ``local_tensors`` names the
    offending tensors of this rank (empty when only peers were affected).
    """

    def __init__(self, statuses: dict[int, int], local_tensors: Sequence[str] = ()) -> None:
        super().__init__(statuses)
        self.local_tensors = tuple(local_tensors)
        if self.local_tensors:
            self.args = (
                f"{self.args[0]} (here: {', '.join(self.local_tensors)}); "
                "training diverged: lower the learning rate or check the data",
            )


class NonFiniteGradientsError(NonFiniteWeightsError):
    """A gradient held NaN/Inf (training diverged), on this rank or a peer (DDP hook).

    Raised on every rank, at the same collective of the same bucket (it surfaces from
    ``loss.backward()``). ``statuses`` maps the failing ranks to their status; ``bucket``
    is the DDP bucket index.
    """

    def __init__(self, statuses: dict[int, int], bucket: int, local: bool) -> None:
        super().__init__(statuses)
        self.bucket = bucket
        ranks = ", ".join(str(r) for r in sorted(statuses))
        here = " (this rank included)" if local else ""
        self.args = (
            f"gradient synchronisation aborted: rank(s) {ranks}{here} have non-finite "
            f"gradients (NaN or Inf) in DDP bucket {bucket}; training diverged: lower the "
            "learning rate or check the data",
        )


class ReferenceMismatchError(TenfoldError, RuntimeError):
    """Ranks disagree on the shared model their deltas are taken against.

    Raised on every rank at the same collective. ``ranks`` are those whose reference hash
    differs from the majority's (rank 0's on a tie).
    """

    def __init__(self, tags: Sequence[int], round: int) -> None:
        counts = Counter(tags)
        top = max(counts.values())
        majority = tags[0] if counts[tags[0]] == top else counts.most_common(1)[0][0]
        self.ranks = tuple(r for r, t in enumerate(tags) if t != majority)
        super().__init__(
            f"rank(s) {', '.join(map(str, self.ranks))} hold a different shared model than "
            f"the others at sync round {round} (reference hash "
            f"{', '.join(f'{tags[r]:08x}' for r in self.ranks)} vs {majority:08x}): a rank "
            "was resumed from another checkpoint or missed a synchronisation; restart every "
            "rank from the same checkpoint"
        )


class BucketMismatchError(TenfoldError, RuntimeError):
    """Ranks disagree on a DDP bucket's layout or on the step counter (raised on every rank).

    Happens when a rank's hook state was restored from another checkpoint, or the ranks
    bucket the model differently.
    """


class ContributionRatioError(TenfoldError, RuntimeError):
    """A rank's decoded contribution is far larger (RMS) than the median rank's.

    Raised on every rank at the same collective, before anything is applied, when
    ``max_contribution_ratio`` is set. Attributes: ``ranks`` (the offenders), ``ratios``
    (each one's RMS over the median RMS), ``rms`` (every rank's contribution RMS) and
    ``round``.
    """

    def __init__(self, rms: Sequence[float], limit: float, round: int) -> None:
        self.rms = tuple(float(r) for r in rms)
        median = float(np.median(self.rms))
        self.ranks = tuple(
            r for r, v in enumerate(self.rms) if v > limit * median and (v > 0 or median > 0)
        )
        self.ratios = tuple(
            self.rms[r] / median if median > 0 else float("inf") for r in self.ranks
        )
        self.round = round
        parts = ", ".join(
            f"rank {r} ({ratio:.3g}x)" for r, ratio in zip(self.ranks, self.ratios, strict=True)
        )
        super().__init__(
            f"sync round {round}: the contribution of {parts} exceeds "
            f"max_contribution_ratio={limit:g} times the median rank's RMS ({median:.4g}); "
            "nothing was applied (a diverging or faulty rank: check its data and learning rate)"
        )


class BufferMismatchError(TenfoldError, ValueError):
    """A non-floating buffer (e.g. ``num_batches_tracked``) differs across ranks.

    Raised on every rank at the same sync. ``buffers`` maps each such buffer's name to the
    ranks whose value differs from rank 0's.
    """

    def __init__(self, buffers: Mapping[str, Sequence[int]]) -> None:
        self.buffers = {name: tuple(ranks) for name, ranks in buffers.items()}
        parts = [
            f"{name!r} on rank(s) {', '.join(map(str, ranks))}"
            for name, ranks in self.buffers.items()
        ]
        super().__init__(
            "integer/bool buffers cannot be averaged and must agree across ranks, but these "
            f"differ from rank 0's: {'; '.join(parts)} (ranks ran different numbers of "
            "steps, or were restored from different checkpoints); pass "
            "buffers='broadcast' to take rank 0's"
        )
