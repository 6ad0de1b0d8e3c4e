"""What a synchronisation cost: :class:`SyncStats` per rank, :class:`TensorStats` per tensor."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tenfold.codec import PacketInfo

__all__ = [
    "SyncStats",
    "TensorStats",
    "merge_pieces",
    "noop_stats",
    "packet_stats",
]


@dataclass(frozen=True)
class TensorStats:
    """How one tensor of this rank's packet was coded.

    Attributes:
        name: the tensor's name (``fc1.weight``, or its position ``"0"`` when unnamed).
        shape: its shape.
        num_values: number of values.
        bits: quantization bits N (the dtype's width when sent raw, e.g. Lossless; 0 for
            a constant tensor).
        entropy: the sampled entropy estimate H in bits (EntropyAdaptive only, else None).
        nbytes: bytes this tensor takes in the packet (its share of the header included,
            as the codec accounts it).
        bits_per_param: ``8 * nbytes / num_values`` (inf for an empty tensor).
        grad_rms: the RMS loss gradient passed in for this tensor, if any.
        mode: the codec's coding mode: "huffman", "ans", "bitpack", "raw" or "constant".
        step: the mid-tread quantizer's step (step policies), else None.
    """

    name: str
    shape: tuple[int, ...]
    num_values: int
    bits: int
    entropy: float | None
    nbytes: int
    bits_per_param: float
    grad_rms: float | None
    mode: str
    step: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (metrics.jsonl uses ``N`` and ``H`` as in the paper)."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "num_values": self.num_values,
            "N": self.bits,
            "H": self.entropy,
            "nbytes": self.nbytes,
            # inf for an empty tensor; JSON has no inf
            "bits_per_param": self.bits_per_param if math.isfinite(self.bits_per_param) else None,
            "grad_rms": self.grad_rms,
            "mode": self.mode,
            "step": self.step,
        }


@dataclass(frozen=True)
class SyncStats:
    """What one synchronisation cost this rank (or one simulated worker).

    Attributes:
        world_size: number of ranks averaged (1: nothing was done).
        rank: this rank in the group (the worker index when simulated).
        round: 0-based index of this synchronisation for this averager.
        bytes_sent: every packet byte this rank puts on the wire in the collective, for
            both protocols: all-gather (gloo ring), its own packet plus the packets it
            forwards (all but its downstream neighbour's own: ``sum(packet_bytes) -
            packet_bytes[rank - 1]``); reduce-scatter, its P-1 shard packets plus its
            share of the ring all-gather of the reduced shards. The small agreement
            messages (sizes, hashes, verdicts: 8-16 bytes per rank) and message headers
            are not counted. Summed over ranks it is the collective's packet traffic.
            0 when not distributed.
        bytes_received: every packet byte this rank receives (same conventions).
        packet_bytes: every rank's coded contribution in bytes, in rank order: its packet
            (all-gather), or the sum of its P shard packets (reduce-scatter, before the
            re-coding of the reduced shards).
        num_values: number of parameter values averaged.
        bits_per_param: ``8 * packet_bytes[rank] / num_values``: the coding rate of this
            rank's contribution (Huffman-coded, everything counted); not the traffic.
        quantized_bits_per_param: N averaged over values (before Huffman coding).
        tensors: per-tensor coding of this rank's packet (reduce-scatter: per piece of its
            shard packets, named ``"fc1.weight[lo:hi]"``, in shard order).
        encode_seconds: wall time coding this rank's packets (s): on the all-gather's
            coding thread (with decoding its own packet for the residual), overlapped
            with the transfers and the decoding.
        comm_seconds: wall time the protocol's thread was blocked on the network (s): the
            size exchanges, waiting for packets still on the wire and for the peers to
            take this rank's, i.e. the transfers that coding and decoding did not hide;
            0 when simulated.
        decode_seconds: wall time decoding and summing the K packets, dividing and
            applying the mean (s).
        encode_cpu_seconds, decode_cpu_seconds: the CPU time of the same work, in the
            threads that ran it (``time.thread_time``; with ``threads > 1`` the codec's
            helper threads are not counted).
        wall_seconds: the whole sync, start to end (s). With the pipeline,
            ``encode + comm + decode - wall`` is the time the phases overlapped (0 when
            simulated: the simulation does not overlap, and reports no wall time).
        collective: ``"all-gather"`` or ``"reduce-scatter"``.
        values_encoded: values this rank coded (n; reduce-scatter: n plus its reduced
            shard).
        values_decoded: values this rank decoded (all-gather: P n; reduce-scatter: the P
            packets of its shard, its own other shards when it keeps a residual, and
            every reduced shard).
        chunks: packets per rank in the all-gather (the model's chunks, coded while the
            previous one is on the wire); 1 for the reduce-scatter.
    """

    world_size: int
    rank: int
    round: int
    bytes_sent: int
    bytes_received: int
    packet_bytes: tuple[int, ...]
    num_values: int
    bits_per_param: float
    quantized_bits_per_param: float
    tensors: tuple[TensorStats, ...]
    encode_seconds: float
    comm_seconds: float
    decode_seconds: float
    collective: str = "all-gather"
    values_encoded: int = 0
    values_decoded: int = 0
    encode_cpu_seconds: float = 0.0
    decode_cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    chunks: int = 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tensors as a list of dicts)."""
        return {
            "world_size": self.world_size,
            "rank": self.rank,
            "round": self.round,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "packet_bytes": list(self.packet_bytes),
            "num_values": self.num_values,
            "bits_per_param": self.bits_per_param,
            "quantized_bits_per_param": self.quantized_bits_per_param,
            "tensors": [t.as_dict() for t in self.tensors],
            "encode_seconds": self.encode_seconds,
            "comm_seconds": self.comm_seconds,
            "decode_seconds": self.decode_seconds,
            "collective": self.collective,
            "values_encoded": self.values_encoded,
            "values_decoded": self.values_decoded,
            "encode_cpu_seconds": self.encode_cpu_seconds,
            "decode_cpu_seconds": self.decode_cpu_seconds,
            "wall_seconds": self.wall_seconds,
            "chunks": self.chunks,
        }


def packet_stats(
    *,
    infos: Sequence[PacketInfo],
    world_size: int,
    rank: int,
    round: int,
    packet_bytes: Sequence[int],
    grad_rms: Mapping[str, float] | None,
    encode_seconds: float,
    comm_seconds: float,
    decode_seconds: float,
    bytes_sent: int,
    bytes_received: int,
    collective: str,
    values_encoded: int,
    values_decoded: int,
    pieces: Mapping[str, tuple[str, tuple[int, ...]]] | None = None,
    encode_cpu_seconds: float = 0.0,
    decode_cpu_seconds: float = 0.0,
    wall_seconds: float = 0.0,
    chunks: int = 1,
) -> SyncStats:
    """One rank's :class:`SyncStats` from its packets' infos.

    ``pieces``: reduce-scatter, piece key -> (tensor name, tensor shape): the pieces of
    one tensor are reported as that tensor (:func:`merge_pieces`).
    """
    tensors = tuple(
        TensorStats(
            name=t.name,
            shape=tuple(t.shape),
            num_values=int(t.num_values),
            bits=int(t.bits),
            entropy=None if t.entropy is None else float(t.entropy),
            nbytes=int(t.nbytes),
            bits_per_param=float(t.bits_per_param),
            grad_rms=None
            if grad_rms is None or t.name not in grad_rms
            else float(grad_rms[t.name]),
            mode=str(t.mode),
            step=t.step,
        )
        for info in infos
        for t in info.tensors
    )
    n = sum(t.num_values for t in tensors)
    quantized = sum(t.bits * t.num_values for t in tensors) / n if n else 0.0
    if pieces is not None:
        tensors = merge_pieces(tensors, pieces, grad_rms)
    own = int(packet_bytes[rank])
    return SyncStats(
        world_size=world_size,
        rank=rank,
        round=round,
        bytes_sent=int(bytes_sent),
        bytes_received=int(bytes_received),
        packet_bytes=tuple(int(b) for b in packet_bytes),
        num_values=n,
        bits_per_param=8.0 * own / n if n else 0.0,
        quantized_bits_per_param=quantized,
        tensors=tensors,
        encode_seconds=encode_seconds,
        comm_seconds=comm_seconds,
        decode_seconds=decode_seconds,
        collective=collective,
        values_encoded=int(values_encoded),
        values_decoded=int(values_decoded),
        encode_cpu_seconds=encode_cpu_seconds,
        decode_cpu_seconds=decode_cpu_seconds,
        wall_seconds=wall_seconds,
        chunks=chunks,
    )


def merge_pieces(
    stats: Sequence[TensorStats],
    pieces: Mapping[str, tuple[str, tuple[int, ...]]],
    grad_rms: Mapping[str, float] | None,
) -> tuple[TensorStats, ...]:
    """Per-piece stats folded into per-tensor ones, in tensor order.

    Values and bytes add up; ``entropy`` is the value-weighted mean; ``bits``, ``mode``
    and ``step`` are those of the tensor's largest piece (a tensor is cut in at most a few
    pieces, at shard boundaries, each coded on its own).
    """
    groups: dict[str, list[TensorStats]] = {}
    for t in stats:
        groups.setdefault(pieces[t.name][0], []).append(t)
    out = []
    for name, parts in groups.items():
        shape = pieces[parts[0].name][1]
        largest = max(parts, key=lambda t: t.num_values)
        n = sum(t.num_values for t in parts)
        nbytes = sum(t.nbytes for t in parts)
        entropies = [t.entropy for t in parts]
        entropy = (
            None
            if any(e is None for e in entropies) or n == 0
            else sum(float(e or 0.0) * t.num_values for e, t in zip(entropies, parts, strict=True))
            / n
        )
        out.append(
            TensorStats(
                name=name,
                shape=shape,
                num_values=n,
                bits=largest.bits,
                entropy=entropy if len(parts) > 1 else parts[0].entropy,
                nbytes=nbytes,
                bits_per_param=8.0 * nbytes / n if n else math.inf,
                grad_rms=None
                if grad_rms is None or name not in grad_rms
                else float(grad_rms[name]),
                mode=largest.mode,
                step=largest.step,
            )
        )
    return tuple(out)


def noop_stats(named: Sequence[tuple[str, torch.Tensor]], *, rank: int, round: int) -> SyncStats:
    """The stats of a sync that did nothing (one rank, or no process group): nothing sent."""
    return SyncStats(
        world_size=1,
        rank=rank,
        round=round,
        bytes_sent=0,
        bytes_received=0,
        packet_bytes=(0,),
        num_values=sum(t.numel() for _, t in named),
        bits_per_param=0.0,
        quantized_bits_per_param=0.0,
        tensors=(),
        encode_seconds=0.0,
        comm_seconds=0.0,
        decode_seconds=0.0,
    )
