"""The errors a synchronisation raises on every rank alike (the group agrees on them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tenfold.distributed.exchange import PeerStatusError

__all__ = [
    "NonFiniteWeightsError",
    "ReferenceMismatchError",
]


class ReferenceMismatchError(RuntimeError):
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
                "training diverged: lower --lr or check the data",
            )
