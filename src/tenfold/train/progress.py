"""Console output of a training run: a tqdm bar and one line per synchronisation.

A line reads::

    epoch  3.00  acc 84.12%  loss 0.1234  3.61 bits/param (N 8.40)  N fc1.w=9 fc1.b=0 ...
        sent 148.1 kB/rank incl. relays, all ranks' packets 185.1 kB

``bits/param`` is as sent (entropy-coded, every byte of the packet counted), the ``N`` in
parentheses the quantization bits averaged over values, then N per tensor. The two byte
counts are different quantities: ``sent .../rank`` is what rank 0 put on the wire, its own
packet plus the peers' packets it relays on the ring (``bytes_sent``); ``all ranks'
packets`` is every rank's coded packet counted once (``bytes_all_ranks``), so it is less
than ranks x per rank.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenfold.train.state import Record, TrainState

__all__ = ["Reporter", "format_bytes", "format_position", "format_record", "plural"]


def format_bytes(n: float) -> str:
    """``148123 -> '148.1 kB'`` (SI units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def plural(n: int, word: str) -> str:
    """``plural(1, "epoch") -> '1 epoch'``, ``plural(2, "epoch") -> '2 epochs'``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_position(record: Record, metrics: Sequence[Record]) -> str:
    """Where in the run ``record`` is, in the unit that suits the run ``metrics`` describe:
    ``"epoch 7"`` when every sync ends an epoch, else ``"sync 3 (step 150, epoch 0.01)"``."""
    if all(float(r["epoch"]).is_integer() for r in metrics):
        return f"epoch {record['epoch']:g}"
    return f"sync {record['sync']} (step {record['step']}, epoch {record['epoch']:.2f})"


#: Tensors listed one by one in a sync's line (more: their range of N).
_MAX_LISTED = 10


def _short(name: str) -> str:
    return name.replace(".weight", ".w").replace(".bias", ".b")


def format_record(record: Record) -> str:
    """The one-line summary of a metrics record."""
    acc = record.get("test_accuracy")
    loss = record.get("test_loss")
    if "val_loss" in record:  # the language model: validation loss and perplexity
        val = record["val_loss"]
        score = (
            f"val loss {val:.4f} nats/char (ppl {record['val_perplexity']:.2f})"
            if val is not None
            else "val loss   -   "
        )
    else:
        acc_s = f"acc {100 * acc:6.2f}%" if acc is not None else "acc    -   "
        loss_s = f"loss {loss:.4f}" if loss is not None else "loss   -   "
        score = f"{acc_s}  {loss_s}"
    tensors = record.get("layers", [])
    if len(tensors) <= _MAX_LISTED:
        layers = " ".join(f"{_short(t['name'])}={t['N']}" for t in tensors)
    else:  # a transformer has dozens of tensors: the range says enough on one line
        ns = [t["N"] for t in tensors]
        layers = f"{min(ns)}..{max(ns)} over {len(ns)} tensors"
    return (
        f"epoch {record['epoch']:6.2f}  {score}  "
        f"{record['bits_per_param']:.2f} bits/param (N {record['quantized_bits_per_param']:.2f})"
        + (f"  N {layers}" if layers else "")
        # two quantities, labelled as such: a reader otherwise expects all = ranks x per rank
        + f"  sent {format_bytes(record['bytes_sent'])}/rank incl. relays,"
        f" all ranks' packets {format_bytes(record['bytes_all_ranks'])}"
    )


class Reporter:
    """Progress bar over synchronisations plus one printed line per sync (lead only).

    Args:
        state: the run's state (for the number of syncs).
        enabled: False: print nothing (ranks other than 0, quiet runs).
        stream: where lines go (default stdout; the bar goes to stderr).
    """

    def __init__(self, state: TrainState, *, enabled: bool = True, stream: Any = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=state.total_syncs,
                initial=state.syncs,
                unit="sync",
                desc=plural(state.config.workers, "worker"),
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
                disable=None,  # no bar when stderr is not a terminal (CI logs, pipes)
            )

    def update(self, record: Record) -> None:
        """Print the record's line and advance the bar."""
        if not self.enabled:
            return
        from tqdm import tqdm

        tqdm.write(format_record(record), file=self.stream)
        self.stream.flush()
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
