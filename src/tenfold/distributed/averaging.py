"""Synchronous model averaging with compressed weights: every rank ends bit-identical.

The protocol of one synchronisation ("round"), on each of K ranks:

1. compress the local tensors into ONE packet with this rank's policy for this round
   (:func:`round_policy`: the policy's sampling seed is derived from ``(seed, rank, round)``);
2. if that failed because a tensor holds NaN/Inf, send a status instead (every rank
   fails, see below);
3. exchange packet sizes (:func:`tenfold.distributed.exchange.exchange_sizes`), then the packets
   themselves around a ring of point-to-point transfers
   (:class:`tenfold.distributed.exchange.PacketTransfer`: exact sizes, no padding; the peers'
   packets arrive one after the other);
4. decode every rank's packet, its own included, and add it into float32 accumulators
   (:func:`tenfold.codec.accumulate`, which validates names/shapes/dtypes first) in rank
   order 0..K-1, divide by K, copy into the parameters in place.

Steps 3 and 4 overlap: a packet is decoded while the next ones are still on the wire
(:class:`RankOrderSum`). The SUM is still formed in rank order 0..K-1 on every rank: a
packet that arrives before its predecessors are in is decoded into zeroed spare arrays
and added when its turn comes, which is bit for bit the same as decoding it into the
accumulators then (``0 + v == v``, and an accumulator started at +0.0 is never -0.0).
Every rank therefore runs the same additions in the same order on the same K packets,
so the result is bit-identical on every rank whatever the policy (lossy or not). Nobody
keeps its own unquantized weights: that is what makes the ranks agree.

:class:`SimulatedAverager` runs the same arithmetic (same functions) for K workers held in
one process; it produces bit for bit the weights K real ranks would.

A rank whose weights are not finite sends a status instead of a packet size; every rank
then raises :class:`NonFiniteWeightsError` at the same collective, instead of the healthy
ones blocking until the timeout.

**What travels: ``transmit="delta"`` (the default) or ``"weights"`` (the paper).** Every
rank holds the last shared model ``w_shared`` (the *reference*), bit for bit. In delta mode
a rank sends only how far it moved, the pseudo-gradient ``d = w_local - w_shared``, plus
its error-feedback residual ``e`` (what its previous packets failed to carry):
``x = d + e`` is coded, ``e' = x - decoded(x)`` is kept, and every rank sets
``w_shared' = w_shared + (sum_k decoded(x_k)) / K``, the sum in rank order, and continues
from it. Deltas are small, centred and peaked, so the same error costs far fewer bits than
coding weights (docs/DESIGN.md). Step policies take their RMS from the fresh ``d``, not
from ``x``: a residual backlog must not coarsen the step (that starved a probe to 22%
accuracy). In weights mode each rank codes its weights and the mean replaces them.

The reference is established once: :meth:`CompressedAverager.initialize` (call it before
training, like DDP's constructor) makes the ranks agree on the starting weights at no cost
when they already do (a hash is compared) and broadcasts rank 0's otherwise; a first sync
without it averages the weights exactly (Lossless packets, 32 bits/param, once). From then
on every size exchange carries a hash of each rank's reference, chained through the
packets' CRCs; a rank whose reference differs (resumed from another checkpoint, or one
that missed a sync) makes every rank raise :class:`ReferenceMismatchError` naming it at
that collective, before anything is averaged.
"""

from __future__ import annotations

import math
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from tenfold.codec import Lossless, PacketInfo, accumulate, compress, decompress, inspect
from tenfold.codec.errors import CorruptPacketError, PacketMismatchError
from tenfold.codec.policy import rms
from tenfold.distributed.exchange import (
    STATUS_NONFINITE,
    PacketTransfer,
    PeerStatusError,
    exchange_sizes,
    exchange_sizes_and_tags,
)

__all__ = [
    "CompressedAverager",
    "NonFiniteWeightsError",
    "BufferPool",
    "ReferenceMismatchError",
    "TRANSMIT_MODES",
    "ParamsLike",
    "RankOrderSum",
    "SimulatedAverager",
    "SyncStats",
    "TensorStats",
    "named_tensors",
    "round_policy",
]

#: ``model.parameters()``, ``model.named_parameters()``, a list of tensors or of pairs.
ParamsLike = Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]

#: Any tenfold policy (``tenfold.EntropyAdaptive()``, ``tenfold.Fixed(8)``, ...).
Policy = Any

#: What a rank sends: its pseudo-gradient (plus residual) or its weights (the paper).
TRANSMIT_MODES = ("delta", "weights")


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
        bytes_sent: size of this rank's packet in bytes, i.e. what it contributes; the
            transport's own overhead (8-byte size per rank, message headers) and the ring's
            forwarding of other ranks' packets are not included. 0 when not distributed.
        bytes_received: the sum of the other ranks' packet sizes.
        packet_bytes: every rank's packet size, in rank order.
        num_values: number of parameter values averaged.
        bits_per_param: ``8 * bytes_sent / num_values`` (Huffman-coded, everything counted).
        quantized_bits_per_param: N averaged over values (before Huffman coding).
        tensors: per-tensor coding of this rank's packet.
        encode_seconds: time to compress this rank's packet (s).
        comm_seconds: time blocked on the network (s): the size exchange, waiting for
            packets still on the wire and for the peers to take this rank's packet, i.e.
            the part of the transfers that decoding did not hide; 0 when simulated.
        decode_seconds: the rest of the sync after encoding (s): decoding and summing all
            K packets (overlapped with the transfers), dividing, copying back. So
            ``encode + comm + decode`` is this rank's wall time of the sync.
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
        }


def _check_announced_sizes(sizes: Sequence[int], named: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Refuse absurd sizes before any buffer is allocated for them.

    No packet of this model can exceed its raw bytes plus headers (the codec never picks a
    mode bigger than raw), so a larger announcement is a broken or hostile peer. Every
    rank sees the same sizes and raises the same error at the same point, so nobody is
    left waiting in the transfer.
    """
    raw = sum(t.numel() * t.element_size() for _, t in named)
    limit = 2 * raw + 65_536 + sum(1024 + 16 * t.dim() + len(n) for n, t in named)
    for peer, size in enumerate(sizes):
        if size > limit:
            raise CorruptPacketError(
                f"rank {peer} announced a packet of {size} bytes, more than any packet of "
                f"this model can need ({limit} bytes): refusing to allocate it"
            )


def _require_parameters(named: list[tuple[str, torch.Tensor]]) -> None:
    """An empty model is a caller's mistake (often a spent ``parameters()`` generator)."""
    if not named:
        raise ValueError(
            "no parameters to average (an empty model, or a parameters() iterator already consumed)"
        )


def named_tensors(params: ParamsLike) -> list[tuple[str, torch.Tensor]]:
    """Normalise ``params`` to ``[(name, tensor), ...]``; unnamed tensors get ``"0"``, ``"1"``...

    Raises:
        TypeError: for a mix of named and unnamed items, or a non-tensor.
        ValueError: for duplicate names.
    """
    items: list[Any] = list(params)
    named = [isinstance(item, tuple) for item in items]
    if any(named) and not all(named):
        raise TypeError("params: mix of tensors and (name, tensor) pairs")
    pairs = list(items) if items and named[0] else [(str(i), t) for i, t in enumerate(items)]
    out: list[tuple[str, torch.Tensor]] = []
    for name, tensor in pairs:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"params: {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        out.append((str(name), tensor))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"params: duplicate tensor names in {names}")
    return out


def round_policy(policy: Policy, *, rank: int, round: int) -> Policy:
    """The policy a rank codes with in a given round: same parameters, derived seed.

    A policy with a ``seed`` in its config (EntropyAdaptive samples weights for its entropy
    estimate) gets ``seed' = SeedSequence([seed, rank, round])`` so that ranks and rounds
    draw independent samples, reproducibly. The distributed and the simulated averager both
    call this function, which is what makes them agree bit for bit. Policies without a seed
    (or with ``seed=None``) are returned unchanged.
    """
    config = policy.get_config()
    seed = config.get("seed")
    if seed is None:
        return policy
    derived = np.random.SeedSequence([int(seed), rank, round]).generate_state(1, np.uint32)[0]
    return type(policy).from_config({**config, "seed": int(derived)})


# ---- the arithmetic both averagers share ---------------------------------------------------


def _wire_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor travels and is accumulated in: float64 stays, others float32.

    The codec's accumulators are float32/float64, and a packet's dtype must equal its
    accumulator's; float16/bfloat16 parameters are therefore coded as float32 (exact) and
    the mean is rounded back to their dtype when copied in.
    """
    if not dtype.is_floating_point:
        raise TypeError(f"can only average floating-point tensors, got {dtype}")
    return torch.float64 if dtype == torch.float64 else torch.float32


def _host_arrays(named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """CPU numpy views in the wire dtype (copies only for device/non-contiguous/half tensors)."""
    return {
        name: t.detach().to("cpu", _wire_dtype(t.dtype)).contiguous().numpy() for name, t in named
    }


def _nonfinite(named: Sequence[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding NaN or Inf (numpy: ~15x faster than torch.isfinite)."""
    return [name for name, a in _host_arrays(named).items() if not np.isfinite(a).all()]


def _fail_nonfinite(bad: Sequence[str], group: dist.ProcessGroup | None) -> NoReturn:
    """Send a status instead of a packet size, then raise with every rank's statuses."""
    try:
        exchange_sizes(0, group=group, status=STATUS_NONFINITE)
    except PeerStatusError as exc:
        raise NonFiniteWeightsError(exc.statuses, bad) from None
    raise AssertionError("unreachable: own status was not reported")  # pragma: no cover


def _encode(
    arrays: Mapping[str, np.ndarray],
    policy: Policy,
    grad_rms: Mapping[str, float] | None,
    scale: Mapping[str, float] | None = None,
) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    blob = compress(arrays, policy, grad_rms=grad_rms, scale=scale)
    return blob, time.perf_counter() - t0


# ---- delta mode: the reference, the residual, the hash -----------------------------------


def _check_transmit(transmit: str, error_feedback: bool) -> None:
    if transmit not in TRANSMIT_MODES:
        raise ValueError(f"transmit must be one of {TRANSMIT_MODES}, got {transmit!r}")
    if not isinstance(error_feedback, bool):
        raise TypeError(f"error_feedback must be a bool, got {error_feedback!r}")


def reference_tag(arrays: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of a reference's names, shapes and bytes, in order (one pass over the model)."""
    crc = 0
    for name, a in arrays.items():
        crc = zlib.crc32(f"{name}{a.shape}{a.dtype.str}".encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(a).data, crc)
    return crc


def _chain_tag(tag: int, round: int, packets: Sequence[Any]) -> int:
    """The next reference's hash: the last one, the round, and every packet's CRC trailer.

    The new reference is a function of the old one and the K packets, so chaining their
    CRC-32s (already in every packet) costs nothing, unlike hashing the model again.
    """
    crc = zlib.crc32(struct.pack("<IQ", tag, round))
    for packet in packets:
        crc = zlib.crc32(bytes(memoryview(packet)[-4:]), crc)
    return crc


def _aligned(
    named: Sequence[tuple[str, torch.Tensor]], ref: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``ref`` in the order of ``named``, after checking it holds the same tensors.

    (A checkpoint may store the reference in another order: safetensors sorts its keys.)
    """
    wire = {n: a.dtype.str for n, a in _zeros_like_wire(named, shape_only=True).items()}
    layout = {n: (tuple(t.shape), wire[n]) for n, t in named}
    expected = {n: (tuple(a.shape), a.dtype.str) for n, a in ref.items()}
    if layout != expected:
        missing = sorted(set(expected) - set(layout))
        extra = sorted(set(layout) - set(expected))
        reshaped = sorted(n for n in set(layout) & set(expected) if layout[n] != expected[n])
        raise ValueError(
            "params do not match the averager's shared model (the same tensors every sync): "
            f"missing {missing}, unexpected {extra}, other shapes or dtypes {reshaped}"
        )
    return {n: ref[n] for n, _ in named}


@dataclass
class _DeltaRank:
    """One rank's delta-mode state: nothing but the residual (the reference is shared)."""

    residual: dict[str, np.ndarray] | None = None

    def inputs(
        self,
        host: Mapping[str, np.ndarray],
        reference: Mapping[str, np.ndarray],
        *,
        error_feedback: bool,
        want_scale: bool,
    ) -> tuple[dict[str, np.ndarray], dict[str, float] | None]:
        """``x = (w - w_shared) + e`` per tensor, and the fresh deltas' RMS (step hints)."""
        x: dict[str, np.ndarray] = {}
        scale: dict[str, float] | None = {} if want_scale else None
        for name, w in host.items():
            d = np.subtract(w, reference[name])
            if scale is not None:
                scale[name] = rms(d.reshape(-1)) if d.size else 0.0
            if error_feedback and self.residual is not None:
                np.add(d, self.residual[name], out=d)
            x[name] = d
        return x, scale

    def keep_residual(self, x: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray]) -> None:
        """``e = x - decoded(x)``: what this rank's packet failed to carry."""
        self.residual = {name: np.subtract(v, decoded[name]) for name, v in x.items()}


def _tensor_dict(arrays: Mapping[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    return None if arrays is None else {n: torch.from_numpy(a.copy()) for n, a in arrays.items()}


def _array_dict(tensors: Mapping[str, Any] | None) -> dict[str, np.ndarray] | None:
    if tensors is None:
        return None
    return {
        n: np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t).copy()
        for n, t in tensors.items()
    }


def _zeros_like_wire(
    named: Sequence[tuple[str, torch.Tensor]], *, shape_only: bool = False
) -> dict[str, np.ndarray]:
    """Fresh zero accumulators: float32 (float64 for float64 tensors), the tensors' shapes.

    ``shape_only``: zero-strided views of one zero (no memory), to describe the layout.
    """
    out = {}
    for name, t in named:
        dtype = np.float64 if _wire_dtype(t.dtype) == torch.float64 else np.float32
        shape = tuple(t.shape)
        out[name] = (
            np.broadcast_to(np.zeros((), dtype), shape) if shape_only else np.zeros(shape, dtype)
        )
    return out


class BufferPool:
    """Zeroed accumulator-shaped arrays, kept from one synchronisation to the next.

    Fresh memory is paid for in page faults on first touch: for 25M float32 values that
    was ~0.07 s per 100 MB array with 4 ranks faulting at once on the 2-core build VM,
    as much as decoding a packet into it. A pool keeps the accumulator and the spares
    mapped; handing one out again costs one ``fill(0)`` pass.

    The pool holds at most the arrays that were in use at the same time in one round
    (the accumulator plus up to K-1 spares, on the rank that receives its lower
    neighbours' packets last), each the size of the model in float32 (float64 for
    float64 tensors). A different set of tensors empties it.
    """

    def __init__(self) -> None:
        self._key: tuple[tuple[str, tuple[int, ...], str], ...] | None = None
        self._free: list[dict[str, np.ndarray]] = []

    @staticmethod
    def _layout(arrays: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        return tuple((n, tuple(a.shape), a.dtype.str) for n, a in arrays.items())

    def take(self, named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, np.ndarray]:
        """Zeroed arrays (+0.0) for ``named``: float32, float64 for float64 tensors."""
        want = self._layout(_zeros_like_wire(named, shape_only=True))
        if want != self._key:
            self._key, self._free = want, []
        if not self._free:
            return _zeros_like_wire(named)
        arrays = self._free.pop()
        for a in arrays.values():
            a.fill(0)
        return arrays

    def give(self, arrays: dict[str, np.ndarray]) -> None:
        """Return arrays from :meth:`take` (ignored if the pool moved to other tensors)."""
        if self._layout(arrays) == self._key:
            self._free.append(arrays)

    @property
    def pooled_bytes(self) -> int:
        """Bytes held between rounds."""
        return sum(a.nbytes for arrays in self._free for a in arrays.values())


def _accumulate_from(rank: int, packet: Any, out: dict[str, np.ndarray]) -> PacketInfo:
    """``accumulate(packet, out)``, with the sending rank named in its errors."""
    try:
        return accumulate(packet, out)
    except PacketMismatchError as exc:
        raise PacketMismatchError(f"packet from rank {rank} does not match: {exc}") from exc
    except CorruptPacketError as exc:
        raise CorruptPacketError(f"packet from rank {rank} is corrupt: {exc}") from exc


class RankOrderSum:
    """Sum K packets into accumulators in rank order 0..K-1, whatever order they arrive in.

    Feed packets with :meth:`offer` as they arrive and call :meth:`step` to do one unit of
    decoding work; when :attr:`done`, :attr:`acc` holds ``((0 + p_0) + p_1) + ... + p_{K-1}``
    (each ``p_r`` the decoded packet of rank r), bit for bit what :func:`_decode_mean`'s
    in-order ``accumulate`` calls produce. A packet whose turn has come is decoded straight
    into the accumulators (fused decode-and-add); an early one, only when there is nothing
    else to do (the caller would otherwise wait for the network), is decoded into zeroed
    spare arrays and added when its turn comes. Same additions, same order: ``0 + v`` is
    exactly ``v``, and an accumulator that starts at +0.0 can never become -0.0, so adding
    a spare's +0.0 where the packet decodes -0.0 changes nothing.

    Args:
        named: the local tensors (names, shapes, dtypes every packet must match).
        world_size: K, the number of packets.
        pool: where the accumulator and the spares come from (and the spares go back to
            once added); a private one if None.

    Attributes:
        acc: name -> accumulator (float32, or float64 for float64 tensors), shaped like
            the tensor.
        infos: rank -> the :class:`PacketInfo` of its packet, once decoded.

    Example::

        s = RankOrderSum(named, 3)
        for rank, packet in ((2, p2), (0, p0), (1, p1)):   # any arrival order
            s.offer(rank, packet)
        while s.step():
            pass
        assert s.done  # s.acc == p0 + p1 + p2, summed in that order
    """

    def __init__(
        self,
        named: Sequence[tuple[str, torch.Tensor]],
        world_size: int,
        *,
        pool: BufferPool | None = None,
    ) -> None:
        self._named = list(named)
        self.world_size = world_size
        self._pool = pool if pool is not None else BufferPool()
        self.acc = self._pool.take(self._named)
        self.infos: dict[int, PacketInfo] = {}
        self._next = 0  # the rank whose packet is added next
        self._arrived: dict[int, Any] = {}  # rank -> packet, not decoded yet
        self._spares: dict[int, dict[str, np.ndarray]] = {}  # rank -> decoded early
        self._borrowed: set[int] = set()  # spares handed in by the caller: not the pool's

    @property
    def done(self) -> bool:
        """Whether every rank's packet has been added."""
        return self._next >= self.world_size

    def offer(self, rank: int, packet: Any) -> None:
        """Hand over rank ``rank``'s packet (bytes-like or uint8 array); no work is done."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank: {rank} not in [0, {self.world_size})")
        if rank < self._next or rank in self._arrived or rank in self._spares:
            raise ValueError(f"rank: the packet of rank {rank} was already offered")
        self._arrived[rank] = packet

    def offer_decoded(self, rank: int, arrays: dict[str, np.ndarray], info: PacketInfo) -> None:
        """Hand over rank ``rank``'s packet already decoded (e.g. this rank's own, decoded
        for error feedback): it is added when its turn comes, as a spare would be. The
        arrays stay the caller's (they never join the pool)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank: {rank} not in [0, {self.world_size})")
        if rank < self._next or rank in self._arrived or rank in self._spares:
            raise ValueError(f"rank: the packet of rank {rank} was already offered")
        self._spares[rank] = arrays
        self._borrowed.add(rank)
        self.infos[rank] = info

    def step(self) -> bool:
        """Do one unit of work; False when nothing can be done before another packet comes.

        In priority order: add the next rank's packet (fused decode-and-add), add its
        spare, or decode the lowest early packet into a spare.

        Raises:
            tenfold.codec.PacketMismatchError / CorruptPacketError: naming the rank.
        """
        r = self._next
        if r >= self.world_size:
            return False
        if r in self._arrived:
            self.infos[r] = _accumulate_from(r, self._arrived.pop(r), self.acc)
            self._next += 1
            return True
        if r in self._spares:
            spare = self._spares.pop(r)
            for name, a in self.acc.items():
                np.add(a, spare[name], out=a)
            if r not in self._borrowed:
                self._pool.give(spare)
            self._next += 1
            return True
        if self._arrived:
            early = min(self._arrived)
            spare = self._pool.take(self._named)
            self.infos[early] = _accumulate_from(early, self._arrived.pop(early), spare)
            self._spares[early] = spare
            return True
        return False


def _decode_own(packet: bytes) -> tuple[dict[str, np.ndarray], PacketInfo]:
    """A rank's own packet, decoded (in the wire dtypes) once: error feedback needs the
    values, and the rank-order sum adds the same arrays instead of decoding it again."""
    return decompress(packet), inspect(packet)


def _divide(acc: Mapping[str, np.ndarray], k: int) -> None:
    for a in acc.values():
        # In place and in the accumulator's dtype: the same rounding on every rank.
        np.divide(a, a.dtype.type(k), out=a)


def _decode_mean(
    packets: Sequence[Any],
    named: Sequence[tuple[str, torch.Tensor]],
    pool: BufferPool | None = None,
    decoded: Sequence[tuple[dict[str, np.ndarray], PacketInfo]] | None = None,
) -> tuple[dict[str, np.ndarray], list[PacketInfo]]:
    """Sum every packet into zeroed accumulators in rank order, then divide by K.

    Each packet is validated against the local tensors by ``accumulate`` (names, order,
    shapes, dtypes). Accumulators are float32 (float64 for float64 tensors), from
    ``pool`` when given. ``decoded``: every packet already decoded (:func:`_decode_own`),
    added instead of decoded again (the same sums, bit for bit: see :class:`RankOrderSum`).
    """
    acc = pool.take(named) if pool is not None else _zeros_like_wire(named)
    if decoded is None:
        infos = [_accumulate_from(rank, packet, acc) for rank, packet in enumerate(packets)]
    else:
        for arrays, _ in decoded:
            for name, a in acc.items():
                np.add(a, arrays[name], out=a)
        infos = [info for _, info in decoded]
    _divide(acc, len(packets))
    return acc, infos


def _copy_back(named: Sequence[tuple[str, torch.Tensor]], acc: Mapping[str, np.ndarray]) -> None:
    with torch.no_grad():
        for name, t in named:
            t.copy_(torch.from_numpy(acc[name]))


def _stats(
    *,
    info: PacketInfo,
    world_size: int,
    rank: int,
    round: int,
    packet_bytes: Sequence[int],
    grad_rms: Mapping[str, float] | None,
    encode_seconds: float,
    comm_seconds: float,
    decode_seconds: float,
) -> SyncStats:
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
        for t in info.tensors
    )
    n = sum(t.num_values for t in tensors)
    sent = int(packet_bytes[rank])
    return SyncStats(
        world_size=world_size,
        rank=rank,
        round=round,
        bytes_sent=sent,
        bytes_received=int(sum(packet_bytes)) - sent,
        packet_bytes=tuple(int(b) for b in packet_bytes),
        num_values=n,
        bits_per_param=8.0 * sent / n if n else 0.0,
        quantized_bits_per_param=sum(t.bits * t.num_values for t in tensors) / n if n else 0.0,
        tensors=tensors,
        encode_seconds=encode_seconds,
        comm_seconds=comm_seconds,
        decode_seconds=decode_seconds,
    )


def _noop_stats(named: Sequence[tuple[str, torch.Tensor]], *, rank: int, round: int) -> SyncStats:
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


# ---- the two transports -------------------------------------------------------------------


class _SharedModel:
    """What both averagers hold about the shared model: round, mode, reference and its hash."""

    def __init__(self, policy: Policy, transmit: str, error_feedback: bool) -> None:
        _check_transmit(transmit, error_feedback)
        self.policy = policy
        self.transmit = transmit
        self.error_feedback = error_feedback
        self.round = 0
        self._pool = BufferPool()
        self._reference: dict[str, np.ndarray] | None = None
        self._tag = 0

    def _shared_state(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "transmit": self.transmit,
            "tag": self._tag,
            "reference": _tensor_dict(self._reference),
        }

    def _load_shared(self, state: Mapping[str, Any]) -> None:
        if state.get("transmit", self.transmit) != self.transmit:
            raise ValueError(
                f"state is for transmit={state['transmit']!r}, this averager sends "
                f"{self.transmit!r}"
            )
        self.round = int(state["round"])
        self._tag = int(state.get("tag", 0))
        self._reference = _array_dict(state.get("reference"))


class CompressedAverager(_SharedModel):
    """Average parameters across the ranks of a process group through compressed packets.

    Args:
        policy: a tenfold policy: for deltas the step policies ``tenfold.TargetRate(b)`` and
            ``tenfold.RelativeStep(alpha)``; the paper's ``EntropyAdaptive``, ``Fixed``,
            ``GradientRMS`` and ``Lossless`` work in either mode. Every rank must use the same.
        process_group: the group to average over (None: the default group).
        transmit: ``"delta"`` (send ``w - w_shared`` plus the residual; module docstring)
            or ``"weights"`` (the paper's scheme: send the weights).
        error_feedback: in delta mode, keep what each packet failed to carry and add it to
            the next delta (ignored in weights mode).

    Attributes:
        round: index of the next synchronisation (part of the training state: restore it
            on resume so the derived sampling seeds continue the same sequence).

    Not distributed (torch.distributed unavailable or not initialised, or a group of one
    rank): :meth:`average` leaves the tensors untouched and returns stats with
    ``world_size=1`` and nothing sent.

    Memory: between synchronisations the averager keeps the float32 arrays it summed into
    (:class:`BufferPool`): one model-sized accumulator, plus one per packet that arrived
    before its turn in the rank-order sum (up to K-1 on the rank worst placed in the
    ring), so up to K times the model in float32; a fresh averager starts empty. Delta
    mode adds the reference and the residual, one model each.

    Backends: gloo codes and exchanges on the CPU. With NCCL the tensors are copied to the
    CPU, coded there, the packets are exchanged as CUDA uint8 tensors and the averaged
    values are copied back to the device (not tested: no GPU on the build machines).

    Example (inside each rank, after ``init_process_group``)::

        avg = CompressedAverager(tenfold.TargetRate(bits_per_param=1.0))
        avg.initialize(model.named_parameters())      # agree on the starting model
        ...                                           # local training steps
        stats = avg.average(model.named_parameters())
        stats.bits_per_param, stats.bytes_sent
    """

    def __init__(
        self,
        policy: Policy,
        *,
        process_group: dist.ProcessGroup | None = None,
        transmit: str = "delta",
        error_feedback: bool = True,
    ) -> None:
        super().__init__(policy, transmit, error_feedback)
        self.process_group = process_group
        self._rank_state = _DeltaRank()

    def _distributed(self) -> bool:
        return (
            dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``round``, and in delta mode the reference, its hash and this rank's residual.

        Tensors are CPU torch tensors (for a safetensors checkpoint); see
        :meth:`load_state_dict`.
        """
        return {**self._shared_state(), "residual": _tensor_dict(self._rank_state.residual)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a resumed run continues bit for bit)."""
        self._load_shared(state)
        self._rank_state = _DeltaRank(_array_dict(state.get("residual")))

    # -- the shared starting point ---------------------------------------------------------------

    def initialize(self, params: ParamsLike) -> int:
        """Make every rank start from the same weights and take them as the shared model.

        Compares a hash of each rank's weights (one int64 per rank); only if they differ is
        rank 0's model broadcast into every rank's tensors (fp32, like DDP at start).
        Collective: every rank must call it. Weights mode needs no reference; calling it
        there still aligns the ranks.

        Returns:
            Bytes this rank received in the broadcast (0 when the ranks agreed).
        """
        named = named_tensors(params)
        _require_parameters(named)
        received = 0
        if self._distributed():
            group = self.process_group
            _, tags = exchange_sizes_and_tags(0, reference_tag(_host_arrays(named)), group=group)
            if len(set(tags)) > 1:
                src = dist.get_global_rank(group, 0) if group is not None else 0
                with torch.no_grad():
                    for _, t in named:
                        dist.broadcast(t.data, src=src, group=group)
                if dist.get_rank(group) != 0:
                    received = sum(t.numel() * t.element_size() for _, t in named)
        self._reference = {n: a.copy() for n, a in _host_arrays(named).items()}
        self._tag = reference_tag(self._reference)
        self._rank_state = _DeltaRank()
        return received

    # -- one synchronisation ----------------------------------------------------------------------

    def average(
        self,
        params: ParamsLike,
        *,
        grad_rms: Mapping[str, float] | None = None,
    ) -> SyncStats:
        """Synchronise, in place: every rank ends with the same (new shared) weights.

        Delta mode: the tensors become ``w_shared + mean_k decoded(d_k + e_k)``; weights
        mode: the mean over ranks of the decoded weights.

        Args:
            params: the tensors, as ``model.parameters()`` or ``model.named_parameters()``
                (names must then match across ranks: they are in the packet).
            grad_rms: per-tensor RMS of the loss gradient, keyed by name (required by
                ``GradientRMS``; recorded in the stats for every policy).

        Returns:
            This rank's :class:`SyncStats`.

        Raises:
            NonFiniteWeightsError: on every rank, if any rank's tensors hold NaN/Inf.
            ReferenceMismatchError: on every rank, if ranks hold different shared models.
            tenfold.codec.PacketMismatchError: a peer's packet has other tensors (names,
                shapes or dtypes); the message names the rank and the tensor.
            tenfold.distributed.CommunicationError: a peer died or the group's timeout expired.
        """
        named = named_tensors(params)
        _require_parameters(named)
        round_ = self.round
        self.round += 1
        if not self._distributed():
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            return _noop_stats(named, rank=rank, round=round_)
        group = self.process_group
        rank = dist.get_rank(group)
        policy = round_policy(self.policy, rank=rank, round=round_)
        host = _host_arrays(named)
        if self.transmit == "weights":
            stats, acc, _ = self._exchange(named, host, policy, grad_rms, None, None, round_)
            _copy_back(named, acc)
            self._pool.give(acc)
        elif self._reference is None:  # no shared model yet: average the weights exactly
            stats, acc, _ = self._exchange(named, host, Lossless(), grad_rms, None, None, round_)
            _copy_back(named, acc)
            self._reference = {n: a.copy() for n, a in acc.items()}
            self._pool.give(acc)
            self._tag = reference_tag(self._reference)
        else:
            self._reference = _aligned(named, self._reference)
            x, scale = self._rank_state.inputs(
                host, self._reference, error_feedback=self.error_feedback,
                want_scale=_uses_scale(policy),
            )  # fmt: skip
            keep = (
                (lambda own: self._rank_state.keep_residual(x, own))
                if self.error_feedback
                else None
            )
            stats, acc, packets = self._exchange(
                named, x, policy, grad_rms, scale, self._tag, round_, keep_own=keep
            )
            for name, ref in self._reference.items():
                np.add(ref, acc[name], out=ref)
            self._pool.give(acc)
            _copy_back(named, self._reference)
            self._tag = _chain_tag(self._tag, round_, packets)
        return stats

    def _exchange(
        self,
        named: Sequence[tuple[str, torch.Tensor]],
        arrays: Mapping[str, np.ndarray],
        policy: Policy,
        grad_rms: Mapping[str, float] | None,
        scale: Mapping[str, float] | None,
        tag: int | None,
        round_: int,
        keep_own: Callable[[dict[str, np.ndarray]], None] | None = None,
    ) -> tuple[SyncStats, dict[str, np.ndarray], list[Any]]:
        """Code ``arrays``, all-gather the packets, decode-sum in rank order, divide by K.

        ``keep_own`` receives this rank's packet decoded (for error feedback), before the
        exchange; the sum then adds those arrays rather than decoding the packet twice.
        Returns this rank's stats, the mean (pool arrays: give them back) and every packet.
        """
        group = self.process_group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        try:
            # The codec refuses NaN/Inf itself (ValueError), so finiteness is only
            # checked, tensor by tensor, when encoding failed: no extra pass when healthy.
            blob, t_encode = _encode(arrays, policy, grad_rms, scale)
        except ValueError:
            bad = _nonfinite(named)
            if not bad:
                raise
            _fail_nonfinite(bad, group)
        t_start = time.perf_counter()
        try:
            sizes, tags = exchange_sizes_and_tags(len(blob), tag or 0, group=group)
        except PeerStatusError as exc:
            raise NonFiniteWeightsError(exc.statuses) from None
        t_sizes = time.perf_counter() - t_start
        if tag is not None and len(set(tags)) > 1:
            raise ReferenceMismatchError(tags, round_)
        _check_announced_sizes(sizes, named)
        summer = RankOrderSum(named, world, pool=self._pool)
        if keep_own is None:
            summer.offer(rank, blob)
        else:
            own, info = _decode_own(blob)
            keep_own(own)
            summer.offer_decoded(rank, own, info)
        packets: list[Any] = [None] * world
        packets[rank] = blob
        with PacketTransfer(blob, sizes, group=group) as transfer:
            # Decode whatever can be decoded; wait for the network only when nothing can.
            # On an error (a peer's packet does not match) the exit still completes the
            # exchange, so every rank raises the same error and the group stays usable.
            while not summer.done:
                item = transfer.poll()
                if item is None and not summer.step():
                    item = transfer.get()
                if item is not None:
                    packets[item[0]] = item[1]
                    summer.offer(*item)
        _divide(summer.acc, world)
        t_comm = t_sizes + transfer.wait_seconds
        t_total = time.perf_counter() - t_start
        stats = _stats(
            info=summer.infos[rank],
            world_size=world,
            rank=rank,
            round=round_,
            packet_bytes=sizes,
            grad_rms=grad_rms,
            encode_seconds=t_encode,
            comm_seconds=t_comm,
            # everything else between the start of the exchange and the end: decoding
            # and adding (mostly overlapped with the transfers), dividing (the caller's
            # copy back is not included)
            decode_seconds=max(0.0, t_total - t_comm),
        )
        return stats, summer.acc, packets


def _uses_scale(policy: Policy) -> bool:
    """Whether the policy takes its step from an RMS hint (RelativeStep)."""
    return bool(getattr(policy, "uses_scale", False))


class SimulatedAverager(_SharedModel):
    """K workers in one process, averaged exactly as K ranks of :class:`CompressedAverager`.

    Same per-rank policy seeds (:func:`round_policy`), same packets, same decode-and-sum in
    worker order, same division, same reference and residuals in delta mode: the weights
    are bit for bit those of a real run with K ranks. Packets are decoded once (every rank
    would decode the same K packets), and the result copied into every worker's tensors.
    The accumulator stays allocated between rounds (:class:`BufferPool`), as in
    :class:`CompressedAverager`.

    Args:
        policy: a tenfold policy, as for :class:`CompressedAverager`.
        transmit: ``"delta"`` or ``"weights"``, as for :class:`CompressedAverager`.
        error_feedback: as for :class:`CompressedAverager`.

    Attributes:
        round: index of the next synchronisation (see :class:`CompressedAverager`).

    Example::

        sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=1.0))
        sim.initialize([m.named_parameters() for m in models])
        stats = sim.average([m.named_parameters() for m in models])  # one SyncStats each
    """

    def __init__(
        self, policy: Policy, *, transmit: str = "delta", error_feedback: bool = True
    ) -> None:
        super().__init__(policy, transmit, error_feedback)
        self._ranks: list[_DeltaRank] = []

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`CompressedAverager.state_dict`, with one residual per worker."""
        residuals = {str(r): _tensor_dict(s.residual) for r, s in enumerate(self._ranks)}
        return {**self._shared_state(), "residual": residuals}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self._load_shared(state)
        residuals = state.get("residual") or {}
        self._ranks = [_DeltaRank(_array_dict(residuals[str(r)])) for r in range(len(residuals))]

    def initialize(self, workers: Sequence[ParamsLike]) -> int:
        """As :meth:`CompressedAverager.initialize`: if the workers differ, worker 0's
        weights are copied into all. Returns the bytes each other worker would receive."""
        named = [named_tensors(p) for p in workers]
        for tensors in named:
            _require_parameters(tensors)
        tags = [reference_tag(_host_arrays(n)) for n in named]
        received = 0
        if len(set(tags)) > 1:
            with torch.no_grad():
                for other in named[1:]:
                    for (_, dst), (_, src) in zip(other, named[0], strict=True):
                        dst.copy_(src)
            received = sum(t.numel() * t.element_size() for _, t in named[0])
        self._reference = {n: a.copy() for n, a in _host_arrays(named[0]).items()}
        self._tag = reference_tag(self._reference)
        self._ranks = [_DeltaRank() for _ in named]
        return received

    def average(
        self,
        workers: Sequence[ParamsLike],
        *,
        grad_rms: Sequence[Mapping[str, float] | None] | None = None,
    ) -> list[SyncStats]:
        """Synchronise the K workers' tensors in place (K = ``len(workers)``).

        Args:
            workers: one ``ParamsLike`` per worker, in rank order.
            grad_rms: one mapping (or None) per worker, as for
                :meth:`CompressedAverager.average`.

        Returns:
            One :class:`SyncStats` per worker, as that rank would have reported it
            (``comm_seconds`` is 0; ``decode_seconds`` is the one shared decode-and-sum,
            division and copy into one worker: what each rank would do, without overlap).

        Raises:
            NonFiniteWeightsError: if any worker's tensors hold NaN/Inf (names the first).
            tenfold.codec.PacketMismatchError: workers hold different tensors.
        """
        named = [named_tensors(p) for p in workers]
        for tensors in named:
            _require_parameters(tensors)
        k = len(named)
        if grad_rms is not None and len(grad_rms) != k:
            raise ValueError(f"grad_rms: {len(grad_rms)} mappings for {k} workers")
        rms_ = list(grad_rms) if grad_rms is not None else [None] * k
        round_ = self.round
        self.round += 1
        if k <= 1:
            return [_noop_stats(n, rank=r, round=round_) for r, n in enumerate(named)]

        bad = {r: _nonfinite(n) for r, n in enumerate(named)}
        bad = {r: names for r, names in bad.items() if names}
        if bad:
            first = min(bad)
            raise NonFiniteWeightsError(
                {r: STATUS_NONFINITE for r in bad}, [f"worker {first}: {n}" for n in bad[first]]
            )
        hosts = [_host_arrays(n) for n in named]
        delta = self.transmit == "delta" and self._reference is not None
        if delta:
            assert self._reference is not None
            for worker in named:  # every worker: one with other tensors is named clearly
                self._reference = _aligned(worker, self._reference)
            if len(self._ranks) != k:
                raise ValueError(f"the averager holds {len(self._ranks)} workers' state, got {k}")
        packets: list[bytes] = []
        t_encode: list[float] = []
        inputs: list[dict[str, np.ndarray]] = []
        for r in range(k):
            policy = round_policy(self.policy, rank=r, round=round_)
            scale = None
            arrays: Mapping[str, np.ndarray] = hosts[r]
            if delta:
                assert self._reference is not None
                arrays, scale = self._ranks[r].inputs(
                    hosts[r], self._reference, error_feedback=self.error_feedback,
                    want_scale=_uses_scale(policy),
                )  # fmt: skip
                inputs.append(arrays)
            elif self.transmit == "delta":  # no shared model yet: the weights, exactly
                policy = Lossless()
            blob, seconds = _encode(arrays, policy, rms_[r], scale)
            packets.append(blob)
            t_encode.append(seconds)
        t0 = time.perf_counter()
        decoded = None
        if delta and self.error_feedback:  # each packet decoded once: residual and sum
            decoded = [_decode_own(p) for p in packets]
            for r, (arrays, _) in enumerate(decoded):
                self._ranks[r].keep_residual(inputs[r], arrays)
        acc, infos = _decode_mean(packets, named[0], self._pool, decoded)
        if delta:
            assert self._reference is not None
            for name, ref in self._reference.items():
                np.add(ref, acc[name], out=ref)
            result = self._reference
        else:
            result = acc
        _copy_back(named[0], result)
        # What one rank does ends here; the rest only exists in the simulation.
        t_decode = time.perf_counter() - t0
        for n in named[1:]:
            _copy_back(n, result)
        if delta:
            self._tag = _chain_tag(self._tag, round_, packets)
        elif self.transmit == "delta":
            self._reference = {n: a.copy() for n, a in acc.items()}
            self._tag = reference_tag(self._reference)
            self._ranks = [_DeltaRank() for _ in range(k)]
        self._pool.give(acc)
        sizes = [len(p) for p in packets]
        return [
            _stats(
                info=infos[r],
                world_size=k,
                rank=r,
                round=round_,
                packet_bytes=sizes,
                grad_rms=rms_[r],
                encode_seconds=t_encode[r],
                comm_seconds=0.0,
                decode_seconds=t_decode,
            )
            for r in range(k)
        ]
