"""The public functions: compress, decompress, inspect, accumulate.

See the package docstring (``tenfold.codec``) for the contract and docs/FORMAT.md for the
bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from tenfold.codec import ans, anspairs, ansquads, bitpack, huffman, ratecontrol
from tenfold.codec.bfloat16 import BFloat16Bits
from tenfold.codec.errors import CorruptPacketError, PacketMismatchError
from tenfold.codec.grouped import Member, decode_group, encode_group, fits, member_values
from tenfold.codec.midtread import StepQuantizer, midtread_lut, midtread_symbols
from tenfold.codec.packet import (
    BFLOAT16,
    DEFAULT_MAX_OUTPUT_BYTES,
    MODE_ANS,
    MODE_ANS_PAIRS,
    MODE_ANS_QUADS,
    MODE_BITPACK,
    MODE_CONSTANT,
    MODE_GROUP,
    MODE_HUFFMAN,
    MODE_RAW,
    QUANT_STEP,
    PacketInfo,
    Record,
    WireDtype,
    encode_member_header,
    encode_record_header,
    finish_packet,
    packet_header,
    parse,
    varint_len,
    wire_dtype,
)
from tenfold.codec.parallel import resolve_threads, run_in_order, useful_threads
from tenfold.codec.policy import (
    GROUP_BYTES,
    GROUP_MAX_VALUES,
    SMALL_PACKET_ALPHA,
    SMALL_TENSOR_ALPHA,
    SMALL_TENSOR_SHARE,
    SMALL_TENSOR_VALUES,
    Policy,
    StepPolicy,
    TargetRate,
    with_seed,
)
from tenfold.codec.quantize import (
    Quantizer,
    finite_min_max,
    kernel_view,
    quantize,
    quantize_histogram,
)
from tenfold.errors import ConfigError, InputTypeError

__all__ = ["accumulate", "compress", "compress_and_decode", "decompress", "inspect"]

#: LUTs beyond 2**16 entries would outgrow the tensors they decode: compute per value.
_MAX_LUT_BITS = 16

ArrayLike = Any  # numpy array, CPU torch tensor, BFloat16Bits, or anything np.asarray takes
_F64 = np.dtype(np.float64)


# ---- inputs -----------------------------------------------------------------------------


def _as_float_array(name: str, value: ArrayLike) -> tuple[np.ndarray, WireDtype]:
    """One input tensor as a native-endian float16/32/64 numpy array and its wire dtype.

    A bfloat16 tensor (a :class:`BFloat16Bits`, or a torch bfloat16 tensor by duck typing:
    torch is never imported here) becomes float32 holding its exact values, with the
    wire dtype :data:`~tenfold.codec.packet.BFLOAT16`.
    """
    if isinstance(value, BFloat16Bits):
        return value.to_float32(), BFLOAT16
    if hasattr(value, "detach"):  # a torch tensor, by duck typing
        if "bfloat16" in str(getattr(value, "dtype", "")):
            # .float() is exact: torch widens bfloat16 by shifting its bits into float32
            return np.asarray(value.detach().cpu().float().numpy()), BFLOAT16
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (2, 4, 8):
        raise InputTypeError(
            f"tensor {name!r} has dtype {arr.dtype}; tenfold codes float16, float32, "
            "float64 and bfloat16 (a torch.bfloat16 tensor or tenfold.codec.BFloat16Bits)"
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr, wire_dtype(arr.dtype)


def _as_packet_bytes(blob: Any) -> np.ndarray:
    """The packet as a 1-D uint8 array (a view when possible)."""
    if hasattr(blob, "detach") and not isinstance(blob, np.ndarray):
        blob = blob.detach().cpu().numpy()
    if isinstance(blob, np.ndarray):
        if blob.dtype != np.uint8:
            raise InputTypeError(f"a packet array must have dtype uint8, got {blob.dtype}")
        return np.ascontiguousarray(blob).reshape(-1)
    if isinstance(blob, (bytes, bytearray, memoryview)):
        try:
            mv = memoryview(blob).cast("B")
        except TypeError as exc:  # non-contiguous memoryview
            raise InputTypeError(f"a packet memoryview must be C-contiguous ({exc})") from None
        return np.frombuffer(mv, dtype=np.uint8)
    raise InputTypeError(
        f"a packet must be bytes, bytearray, memoryview or a uint8 array, got {type(blob)!r}"
    )


def _check_max_output(max_output_bytes: int) -> int:
    if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int):
        raise InputTypeError("max_output_bytes must be an int")
    if max_output_bytes < 0:
        raise ConfigError("max_output_bytes must be >= 0")
    return max_output_bytes


# ---- compress ---------------------------------------------------------------------------


def compress(
    tensors: Mapping[str, ArrayLike],
    policy: Policy = TargetRate(bits_per_param=1.0),  # noqa: B008 - frozen, immutable
    *,
    grad_rms: Mapping[str, float] | None = None,
    scale: Mapping[str, float] | None = None,
    threads: int | None = None,
    seed: int | None = None,
) -> bytes:
    """Code named float tensors into one self-describing packet.

    Args:
        tensors: name -> numpy array or CPU torch tensor (float16/32/64 or bfloat16, any
            shape, 0-d and empty included). numpy has no bfloat16: pass a torch.bfloat16
            tensor or :class:`~tenfold.codec.BFloat16Bits` (its uint16 bit patterns); its
            record says bfloat16 and its raw values take 2 bytes. Names are unique
            strings; order is kept.
        policy: how the tensors are quantized. The default,
            :class:`~tenfold.codec.policy.TargetRate` ``(bits_per_param=1.0)``, is the
            library's default everywhere (averagers, ``LocalSGD``, the DDP hook): the
            mid-tread quantizer with packet-level rate control. The paper's scheme is
            :class:`~tenfold.codec.policy.EntropyAdaptive` (its Algorithm 1); ``Fixed``,
            ``GradientRMS`` and ``Lossless`` are the paper's too.
        grad_rms: per-tensor RMS gradient G, required by :class:`GradientRMS`.
        scale: per-tensor RMS for the step policies to take their steps from, instead of
            the values' own (the averager passes the fresh delta's RMS when the values
            include an error-feedback residual): ``RelativeStep`` uses ``alpha * scale``,
            ``TargetRate`` one packet-wide multiplier times each tensor's scale.
        threads: how many threads code the tensors: None (the default) uses every core
            this process may run on (its CPU affinity), 1 codes them one after the other
            in the calling thread. Tensors are coded in parallel (one task per tensor, the
            largest first); the packet's bytes do not depend on this setting. Threads
            left over (fewer tensors than threads) split a large tensor's element-wise
            passes; its entropy coding runs in one thread. The policy's ``choose_bits`` /
            ``choose_step`` is then called from several threads at once: the built-in
            policies are stateless; a custom policy must be too (or pass ``threads=1``).
        seed: the sampling seed for this packet, instead of the policy's own ``seed``
            (policies that draw samples: ``EntropyAdaptive``, ``TargetRate``); the
            averagers pass :func:`~tenfold.codec.policy.derive_seed` of the policy's seed,
            the rank and the round. None: the policy's own.

    Returns:
        The packet (bytes). ``8 * len(packet) / total values`` is the true bits/param.

    Raises:
        InputTypeError: (a ``TypeError``) non-mapping input, non-str names, non-float
            dtypes.
        ConfigError: (a ``ValueError``) NaN/Inf values (message names the tensor), bad
            policy inputs, a ``threads`` that is not None or an int >= 1.

    Example:
        >>> import numpy as np, tenfold
        >>> w = np.linspace(-1, 1, 1000, dtype=np.float32)
        >>> blob = compress({"w": w}, tenfold.Fixed(8))
        >>> out = decompress(blob)["w"]
        >>> bool(np.abs(out - w).max() <= 2 / 2**9 + 1e-6)
        True
        >>> d = np.random.default_rng(0).laplace(size=100_000).astype(np.float32)
        >>> info = inspect(compress({"d": d}))  # the default: TargetRate(bits_per_param=1.0)
        >>> round(info.bits_per_param, 2), info.tensors[0].mode
        (0.99, 'ans')
    """
    return _compress(tensors, policy, grad_rms, scale, threads, seed, None)


def compress_and_decode(
    tensors: Mapping[str, ArrayLike],
    policy: Policy = TargetRate(bits_per_param=1.0),  # noqa: B008 - frozen, immutable
    *,
    grad_rms: Mapping[str, float] | None = None,
    scale: Mapping[str, float] | None = None,
    threads: int | None = None,
    seed: int | None = None,
) -> tuple[bytes, dict[str, np.ndarray], PacketInfo]:
    """:func:`compress`, what :func:`decompress` returns for its packet (bit for bit), and
    :func:`inspect` of it.

    Cheaper than decompressing the packet: with :class:`TargetRate` the coder writes the
    decoding of each tensor it codes in one fused pass (the level it has just formed times
    the step, rounded once as the decoder's table is; looked up in that table for float16
    and bfloat16 wires), and only the other records (small tensors, the group, raw) are decoded
    from the packet. A sender that keeps an error-feedback residual (``x - decoded``)
    needs exactly this. Arguments, errors and the packet are those of :func:`compress`;
    the arrays are those of :func:`decompress` (same names, shapes, dtypes).

    Example:
        >>> import numpy as np, tenfold
        >>> d = np.random.default_rng(0).laplace(size=100_000).astype(np.float32)
        >>> blob, out, info = compress_and_decode({"d": d})
        >>> bool(np.array_equal(out["d"], decompress(blob)["d"])), info == inspect(blob)
        (True, True)
    """
    decoding = _Decoding()
    blob = _compress(tensors, policy, grad_rms, scale, threads, seed, decoding)
    data = _as_packet_bytes(blob)
    packet = parse(data, 1 << 62)  # our own packet: its size was the caller's to choose
    if decoding.buffer is None:  # not TargetRate's packet-level path: decode it all
        decoding.allocate_records(packet.records)
    rest = [i for i in range(len(packet.records)) if i not in decoding.written]
    return blob, decoding.decode(data, packet.records, rest, resolve_threads(threads)), packet.info


class _Decoding:
    """Where decoded arrays go: one buffer for every tensor, each at a 64-byte boundary
    (one large buffer gets huge pages, where 76 tensor-sized ones page-faulted every
    4 KiB: a fresh array per tensor made a CharGPT packet's decompress 4x slower than
    decoding into place), and which tensors :func:`compress_and_decode`'s coder wrote as
    it coded them."""

    def __init__(self) -> None:
        self.buffer: np.ndarray | None = None
        self.written: set[int] = set()
        self._slots: list[tuple[int, int, np.dtype]] = []

    def allocate(self, arrays: list[np.ndarray]) -> None:
        """One slot per array: its size, in its dtype (native byte order)."""
        self._allocate([(arr.size, arr.dtype) for arr in arrays])

    def allocate_records(self, records: list[Record]) -> None:
        """One slot per record, as :func:`decompress` returns it."""
        self._allocate([(rec.info.num_values, rec.dtype) for rec in records])

    def _allocate(self, slots: list[tuple[int, np.dtype]]) -> None:
        start = 0
        for n, dtype in slots:
            dtype = dtype.newbyteorder("=")
            self._slots.append((start, n, dtype))
            start += -(-n * dtype.itemsize // 64) * 64
        self.buffer = np.empty(start, dtype=np.uint8)

    def view(self, i: int) -> np.ndarray:
        """Tensor ``i``'s slot, 1-D."""
        assert self.buffer is not None
        start, n, dtype = self._slots[i]
        return self.buffer[start : start + n * dtype.itemsize].view(dtype)

    def decode(
        self, data: np.ndarray, records: list[Record], indices: list[int], workers: int
    ) -> dict[str, np.ndarray]:
        """Decode records ``indices`` into their slots (a task per record on up to
        ``workers`` threads); every record's array, shaped, by name."""
        levels = _group_levels(data, [records[i] for i in indices])

        def one(i: int) -> None:
            _decode_record(data, records[i], self.view(i), add=False, levels=levels)

        sizes = [records[i].info.num_values for i in indices]
        run_in_order([partial(one, i) for i in indices], useful_threads(workers, sum(sizes)), sizes)
        return {
            rec.info.name: self.view(i).reshape(rec.info.shape) for i, rec in enumerate(records)
        }


def _compress(
    tensors: Mapping[str, ArrayLike],
    policy: Policy,
    grad_rms: Mapping[str, float] | None,
    scale: Mapping[str, float] | None,
    threads: int | None,
    seed: int | None,
    decoding: _Decoding | None,
) -> bytes:
    """:func:`compress`; with ``decoding``, TargetRate's path writes the decoding of the
    tensors it codes in its fused pass there."""
    if not isinstance(tensors, Mapping):
        raise InputTypeError(f"tensors must be a mapping of name -> array, got {type(tensors)!r}")
    if not isinstance(policy, Policy):
        raise InputTypeError(f"policy must be a tenfold policy (e.g. Fixed(8)), got {policy!r}")
    policy = with_seed(policy, seed)
    workers = resolve_threads(threads)
    jobs: list[tuple[str, ArrayLike, int, float | None]] = []
    name_error: Exception | None = None
    seen: set[str] = set()
    for position, (name, value) in enumerate(tensors.items()):
        try:
            _check_name(name, seen)
        except (TypeError, ValueError) as exc:
            # Raised only after the tensors before it were coded, so that the error is the
            # serial path's whatever the thread count (an earlier NaN tensor wins).
            name_error = exc
            break
        jobs.append((name, value, position, None if scale is None else scale.get(name)))
    # Threads the tensors leave over (one tensor and 8 threads: all 8) split each tensor's
    # element-wise passes (range, quantization, histogram) into chunks.
    sizes = [_size_hint(job[1]) for job in jobs]
    workers = useful_threads(workers, sum(sizes))
    inner = max(1, workers // max(1, len(jobs)))
    if isinstance(policy, TargetRate) and policy.coder == "auto":
        return _compress_packet_rate(
            jobs, policy, workers, inner, name_error, len(tensors), decoding
        )
    tasks = [
        partial(_code_one, name, value, policy, position, grad_rms, hint, inner)
        for name, value, position, hint in jobs
    ]
    coded = run_in_order(tasks, workers, sizes)
    if name_error is not None:
        raise name_error
    parts: list[bytes | np.ndarray] = [b""]  # the header, once the version is known
    version = 1
    for record, needs_v2, wire in coded:
        parts += record
        version = max(version, 2 if needs_v2 else 1, wire.min_version)
    # Version 1 whenever it can say everything: the paper's policies keep their packets.
    parts[0] = packet_header(len(tensors), version)
    return finish_packet(parts)


def _compress_packet_rate(
    jobs: list[tuple[str, ArrayLike, int, float | None]],
    policy: TargetRate,
    workers: int,
    inner: int,
    name_error: Exception | None,
    count: int,
    decoding: _Decoding | None = None,
) -> bytes:
    """:class:`TargetRate` for the packet as a whole (``tenfold.codec.ratecontrol``).

    One pass per tensor for its statistics (range, histogram), one step multiplier for
    the packet from them (``ratecontrol.plan_alpha``), then one fused quantize-and-code
    pass per tensor of :data:`FUSED_MIN_VALUES` values or more (its ANS table from the
    model, two values per coder step where that costs nothing), the exact mid-tread path
    for smaller ones; tensors whose payload would be under :data:`GROUP_BYTES` share the
    group section (format version 3). ``decoding`` receives the decoding of every tensor
    the fused pass codes, written in that pass.
    """
    inputs = [(name, *_as_float_array(name, value)) for name, value, _, _ in jobs]
    if decoding is not None:
        decoding.allocate([arr for _, arr, _ in inputs])
    views = [kernel_view(arr) for _, arr, _ in inputs]
    coded = [i for i, x in enumerate(views) if x.size]
    tasks = [partial(ratecontrol.tensor_stats, views[i], inner) for i in coded]
    stats_list = run_in_order(tasks, workers, [views[i].size for i in coded])
    stats = dict(zip(coded, stats_list, strict=True))
    for i in coded:
        if not stats[i].finite:
            raise ConfigError(_nonfinite_message(inputs[i][0], views[i]))
    if name_error is not None:
        raise name_error
    total = sum(x.size for x in views)
    budget = policy.bits_per_param * total / 8.0
    fixed = 10.0 + varint_len(count)  # packet header and CRC
    records: dict[int, list[bytes | np.ndarray]] = {}
    controlled: list[int] = []
    grouped: list[bool] = []
    for i, (name, arr, wire) in enumerate(inputs):
        st = stats.get(i)
        if st is None or st.w_min == st.w_max:  # empty or constant: as every policy does
            records[i] = _encode_tensor(name, arr, wire, policy, i, None, None)[0]
            fixed += sum(len(part) for part in records[i])
            continue
        controlled.append(i)
        name_len = len(name.encode("utf-8")) + 3 + sum(varint_len(d) for d in arr.shape)
        small = st.n * policy.bits_per_param / 8.0 < GROUP_BYTES and st.n <= GROUP_MAX_VALUES
        grouped.append(small)
        fixed += name_len + 9 if small else name_len + 18 + wire.nbytes * 2
    if any(grouped):
        fixed += 10.0
    # each step is alpha times the tensor's scale: the caller's (the fresh delta's RMS,
    # when the values hold an error-feedback residual) or the values' own RMS
    refs = []
    for i in controlled:
        hint = jobs[i][3]
        refs.append(float(hint) if hint is not None and hint > 0 else stats[i].rms)
    # Small tensors (biases, norms) of a larger model are coded at no more than
    # SMALL_TENSOR_ALPHA times their scale, as the per-tensor rate control did: a few bits
    # each, a fraction of a percent of the packet, and they never freeze (frozen output
    # biases cost 11 points of accuracy on the paper's task). Where they are most of the
    # packet (a tiny model), the packet's budget rules them like everything else.
    tiny = [stats[i].n <= SMALL_TENSOR_VALUES for i in controlled]
    tiny_values = sum(stats[i].n for i, t in zip(controlled, tiny, strict=True) if t)
    cap_tiny = tiny_values <= SMALL_TENSOR_SHARE * max(total, 1)
    caps = [SMALL_TENSOR_ALPHA if t and cap_tiny else math.inf for t in tiny]
    model = ratecontrol.PacketModel([stats[i] for i in controlled], fixed, grouped, refs, caps)
    alpha = ratecontrol.plan_alpha(model, budget, SMALL_PACKET_ALPHA)
    steps = dict(zip(controlled, ratecontrol.steps_for(model, alpha), strict=True))
    member_of = {
        i: Member(views[i], inputs[i][2], stats[i].w_min, stats[i].w_max, steps[i])
        for i, small in zip(controlled, grouped, strict=True)
        if small
    }
    kept, _ = fits(list(member_of.values()))  # the refused ones are coded on their own
    kept_ids = {id(m) for m in kept}
    in_group = {i for i, m in member_of.items() if id(m) in kept_ids}
    separate = [i for i in controlled if i not in in_group]
    version = max([1, *(wire.min_version for _, _, wire in inputs)])
    for i in controlled:
        if i in in_group:
            name, arr, wire = inputs[i]
            step = steps[i]
            records[i] = [encode_member_header(name=name, dtype=wire, shape=arr.shape, step=step)]
            version = 3

    def one(i: int) -> tuple[list[bytes | np.ndarray], int]:
        name, arr, wire = inputs[i]
        common = {"name": name, "dtype": wire, "shape": arr.shape}
        st = stats[i]
        x = views[i]
        # the decoding is written in the fused pass where the output dtype is the
        # kernel's (float32/float64; bfloat16 as float32); float16 is decoded afterwards
        out = decoding.view(i) if decoding is not None and arr.dtype == x.dtype else None
        fused = _fused_ans_record(common, arr, x, steps[i], st, out)
        if fused is not None:
            if out is not None:
                assert decoding is not None
                decoding.written.add(i)  # one thread per tensor: a set's add is atomic
            return fused
        record, needs_v2 = _step_record(
            common, arr, views[i], steps[i], None, "auto", st.w_min, st.w_max, threads=inner
        )
        return record, 2 if needs_v2 else 1

    tasks2: list[Any] = [partial(one, i) for i in separate]
    weights = [views[i].size for i in separate]
    if kept:
        tasks2.append(partial(encode_group, kept))
        weights.append(sum(m.x.size for m in kept))
    # Coded last tensor first: the statistics pass has just read them first to last, so
    # the last ones are still in the cache (the CharGPT set, 43 MB against a 32 MB L3:
    # 22.2 -> 21.7 ms at 1 bit/param, three alternating launches of each). The results
    # come back in packet order.
    results = run_in_order(tasks2[::-1], workers, weights[::-1])[::-1]
    for i, (record, needs) in zip(separate, results, strict=False):
        records[i] = record
        version = max(version, needs)
    parts: list[bytes | np.ndarray] = [packet_header(count, version)]
    for i in range(len(inputs)):
        parts += records[i]
    if kept:
        parts += results[-1]
    return finish_packet(parts)


#: ans-pairs is chosen when its modelled size, at a precision of at most
#: PAIR_MAX_SCALE_BITS, is at most this fraction above single symbols'. Rare pairs take
#: slots from common ones: on a CharGPT pseudo-gradient 12 bits cost nothing at <= 16
#: levels and 1% at 32; on Laplace values at 1.56 bits/value 2.3% at 12 bits, 1.0% at 13,
#: 0.4% at 14, where pairs coded 1.5x faster and decoded 1.3x faster than singles.
PAIR_TOLERANCE = 0.001
PAIR_MAX_SCALE_BITS = 14
#: one more bit of pair precision, where the record's whole size says it pays: Laplace
#: values at 1 bit/param cost 0.25% more as pairs at 14 bits and 0.05% at 15, where their
#: (explicit) pair table, ~130 bytes more than the single-symbol one, is what remains. With
#: it counted (within PAIR_WIDE_TOLERANCE of the single-symbol record), large tensors take
#: pairs (a 25M-parameter model's 1 bit/param packet: compress +27-37%, decompress +15-20%,
#: 0.13% more bits; docs/SPEED.md) and small ones keep single symbols.
PAIR_WIDE_SCALE_BITS = 15
PAIR_WIDE_TOLERANCE = 0.002
#: ans-quads (alphabets of at most 2**ansquads.MAX_QUAD_BITS levels) is chosen when its
#: modelled size, at a precision of at most QUAD_MAX_SCALE_BITS, is at most PAIR_TOLERANCE
#: above that of what would be chosen otherwise (pairs, else single symbols).
QUAD_MAX_SCALE_BITS = 14


def _model_bits(p: np.ndarray, freq: np.ndarray, scale_bits: int) -> float:
    """Expected bits per symbol of coding probabilities ``p`` with these frequencies."""
    used = p > 0
    return float(-(p[used] * np.log2(freq[used] / float(1 << scale_bits))).sum())


#: tensors of fewer values are coded from their exact histogram (a counting pass): the
#: modelled table costs ~1% more bytes on a 12k-value tensor, nothing measurable on 100k+
FUSED_MIN_VALUES = 1 << 16


def _single_model(
    counts: np.ndarray, freq: np.ndarray, scale_bits: int
) -> tuple[np.ndarray, float]:
    """``counts``' probabilities and their modelled bits per symbol coded with ``freq`` at
    ``scale_bits`` (what the joint alphabets are compared against; taken once per record)."""
    p = counts / counts.sum()
    return p, _model_bits(p, freq, scale_bits)


def _pair_frequencies(
    counts: np.ndarray,
    used: int,
    freq: np.ndarray,
    scale_bits: int,
    single: tuple[np.ndarray, float] | None = None,
    values: int = 0,
) -> tuple[np.ndarray, int] | None:
    """The pair alphabet's frequencies and precision where pairs are chosen (module
    constants PAIR_TOLERANCE, PAIR_MAX_SCALE_BITS; with ``values``, the record's number
    of values, also PAIR_WIDE_SCALE_BITS), else None.

    ``counts``: the ``2**bits`` level counts (``used`` of them nonzero, first); ``freq`` at
    ``scale_bits``: their single-symbol frequencies. A pair's count comes from the product
    of its halves' probabilities (symbol ``a + b * 2**bits`` at ``[b, a]``). ``single``:
    :func:`_single_model`'s result, when the caller has it.
    """
    p, bits_per_value = _single_model(counts, freq, scale_bits) if single is None else single
    pair_counts = anspairs.product_counts(p, used, int(counts.size).bit_length() - 1)
    bound = (1.0 + PAIR_TOLERANCE) * (2.0 * bits_per_value)
    lowest = ans.scale_bits_for(used * used)
    pair = _joint_search(pair_counts, lowest, PAIR_MAX_SCALE_BITS, bound)
    if pair is not None or values <= 0 or lowest > PAIR_WIDE_SCALE_BITS:
        return None if pair is None else pair[:2]
    # the wider table, its bytes and the single-symbol table's counted (the values' bits
    # modelled as above): at most (1 + tolerance) times the single-symbol record's size
    wide = _joint_search(pair_counts, PAIR_WIDE_SCALE_BITS, PAIR_WIDE_SCALE_BITS, math.inf)
    assert wide is not None
    wide_bits = wide[2] * (values / 2.0) + 8.0 * len(ans._packed(wide[0]))
    single_bits = bits_per_value * values + 8.0 * len(ans._packed(freq))
    return wide[:2] if wide_bits <= (1.0 + PAIR_WIDE_TOLERANCE) * single_bits else None


def _joint_search(
    joint: np.ndarray, lowest: int, highest: int, bound: float
) -> tuple[np.ndarray, int, float] | None:
    """The frequencies of the joint alphabet's ``joint`` counts at the lowest precision in
    ``lowest .. highest`` whose modelled bits per joint symbol are at most ``bound``, that
    precision and those bits; None if none is."""
    # _model_bits per precision, its operands taken once: the same elements, in the same
    # order, through the same operations, so the same float (the choice is bit-exact)
    nonzero = np.flatnonzero(joint)
    pq = (joint / joint.sum())[nonzero]
    for joint_bits in range(lowest, highest + 1):
        joint_freq = ans._quantized(joint, joint_bits)
        cost = float(-(pq * np.log2(joint_freq[nonzero] / float(1 << joint_bits))).sum())
        if cost <= bound:
            return joint_freq, joint_bits, cost
    return None


def _ans_alphabet(
    counts: np.ndarray,
    used: int,
    bits: int,
    freq: np.ndarray,
    scale_bits: int,
    single: tuple[np.ndarray, float] | None = None,
    values: int = 0,
) -> tuple[int, np.ndarray, int]:
    """The ANS mode (ans, ans-pairs or ans-quads), frequencies and precision of a step
    record whose ``2**bits`` level counts are ``counts`` (``used`` nonzero, first) and
    whose single-symbol frequencies are ``freq`` at ``scale_bits``.

    Pairs where the model says they cost at most PAIR_TOLERANCE more than single values
    (at PAIR_WIDE_SCALE_BITS, tables included: ``values``, the record's number of values);
    then, for at most ``2**MAX_QUAD_BITS`` levels, quads where they cost at most
    PAIR_TOLERANCE more than single values (compared per four values). ``single``:
    :func:`_single_model`'s result, when the caller has it.
    """
    if bits > anspairs.MAX_PAIR_BITS:
        return MODE_ANS, freq, scale_bits
    if single is None:
        single = _single_model(counts, freq, scale_bits)
    if bits <= ansquads.MAX_QUAD_BITS:
        # against single values' modelled cost (not the pairs'): the tolerances do not add
        # up, and the pairs need no search where quads are chosen
        p = single[0]
        bound = (1.0 + PAIR_TOLERANCE) * (4.0 * single[1])
        quad_counts = ansquads.product_counts(p, used, bits)
        quad = _joint_search(quad_counts, ans.scale_bits_for(used**4), QUAD_MAX_SCALE_BITS, bound)
        if quad is not None:
            return MODE_ANS_QUADS, quad[0], quad[1]
    pair = _pair_frequencies(counts, used, freq, scale_bits, single, values)
    if pair is not None:
        return MODE_ANS_PAIRS, *pair
    return MODE_ANS, freq, scale_bits


#: the fused pass gives every level of a tensor's range a slot of the ANS table (it codes
#: before it has counted), so a heavy-tailed tensor's many empty levels take slots from
#: the used ones. Above this modelled loss (cross-entropy over entropy, minus 1) the exact
#: path counts the levels first and codes it instead: Student-t(3) values at 4 bits/param
#: were 6.4% over their target with the fused pass, 0.9% with the exact one, at the same
#: error; an AdamW pseudo-gradient never gets here.
FUSED_MAX_TABLE_LOSS = 0.005


def _table_loss(single: tuple[np.ndarray, float], used: int) -> float:
    """How much more than their entropy a record's level counts cost with their ANS table
    (a fraction: 0.01 is 1% more bits), from :func:`_single_model`'s result; the first
    ``used`` counts are the nonzero ones."""
    p = single[0][:used]
    entropy = float(-(p * np.log2(p)).sum())
    if entropy <= 0.0:
        return 0.0
    return single[1] / entropy - 1.0


def _fused_ans_record(
    common: dict[str, Any],
    arr: np.ndarray,
    x: np.ndarray,
    step: float,
    st: ratecontrol.TensorStats,
    decoded: np.ndarray | None = None,
) -> tuple[list[bytes | np.ndarray], int] | None:
    """A step + ANS record coded in one pass over ``x`` and the format version it needs
    (3 for pairs, 4 for quads), or None where the exact path must decide (a small tensor,
    a clamp, one level, levels beyond the dtype, or raw would be smaller). ``decoded``
    (``x.size`` values of ``x``'s dtype) receives the record's decoding, written in the
    same pass.

    The frequencies come from the rate-control histogram (``ratecontrol.level_counts``),
    not from a counting pass: quantization is fused into the coder. Everything passed to
    the coders is valid by construction, so their unchecked entry points are used.
    """
    wire = common["dtype"]
    q = StepQuantizer.for_range(st.w_min, st.w_max, step)
    if q.needs_clamp or q.bits == 0 or x.size < FUSED_MIN_VALUES:
        return None
    top = q.qmin + (1 << q.bits) - 1
    fused_lut: np.ndarray | None = None
    fused_step: float | None = None
    if decoded is None or (wire.dtype == x.dtype and not wire.is_bfloat16):
        # Record.lut()'s end values only (midtread_lut's rule); a decoding in the wire's
        # own dtype is computed in the quantizing loop by the same rule (float64(level) *
        # step, rounded once): no table lookups, which cost a third of a pair encoder's
        # time (1.5M Gaussian values at 1.4 bits: 2.53 ms against 1.78 without decoding)
        with np.errstate(over="ignore"):
            ends = wire.cast(np.array([q.qmin, top], dtype=np.float64) * np.float64(q.step))
        fused_step = None if decoded is None else q.step
    else:
        full = wire.cast(midtread_lut(q.qmin, q.step, q.bits, _F64))  # Record.lut()'s values
        ends = full[[0, -1]]
        fused_lut = full.astype(x.dtype)
    if not np.isfinite(ends).all():
        return None
    used = q.qmax - q.qmin + 1
    counts = np.zeros(1 << q.bits, dtype=np.int64)
    counts[:used] = ratecontrol.level_counts(st, q.step, q.qmin, q.qmax)  # each >= 1
    scale_bits = ans.scale_bits_for(used)
    freq = ans._quantized(counts, scale_bits)
    single = _single_model(counts, freq, scale_bits)
    if _table_loss(single, used) > FUSED_MAX_TABLE_LOSS:
        return None
    # Two or four values per coder step, a pair's or quad's frequency from the product of
    # its values', where the model says that costs at most PAIR_TOLERANCE more (the joint
    # alphabets' 12-bit frequencies are coarser for wide alphabets).
    mode, freq, scale_bits = _ans_alphabet(
        counts, used, q.bits, freq, scale_bits, single, values=x.size
    )
    table = ans._packed(freq)
    levels = (x, q.inv, q.qmin, q.qmin, q.qmax)  # the values and their quantizer
    fused = (fused_lut, decoded, fused_step)  # where the decoding goes, and how
    if mode == MODE_ANS_QUADS:
        lanes = ansquads._encode_level_quads(*levels, q.bits, freq, scale_bits, *fused)
    elif mode == MODE_ANS_PAIRS:
        lanes = anspairs._encode_level_pairs(*levels, q.bits, freq, scale_bits, *fused)
    else:
        lanes = ans._encode_levels(*levels, freq, scale_bits, *fused)
    sizes = [lane.size for lane in lanes]
    if sum(sizes) + _ans_overhead(table, sizes) >= arr.size * wire.nbytes:
        return None
    header = encode_record_header(
        **common, quant=QUANT_STEP, step=q.step, qmin=q.qmin, clamped=0, mode=mode,
        bits=q.bits, entropy=None, w_min=st.w_min, w_max=st.w_max, scale_bits=scale_bits,
        table=table, stream_nbytes=sizes,
    )  # fmt: skip
    return [header, *lanes], _ANS_VERSIONS[mode]


#: the format version each ANS mode needs
_ANS_VERSIONS = {MODE_ANS: 2, MODE_ANS_PAIRS: 3, MODE_ANS_QUADS: 4}


def _nonfinite_message(name: str, x: np.ndarray) -> str:
    """Why a tensor with NaN/Inf values is refused: how many, and where the first is."""
    flat = x.reshape(-1)
    nan = int(np.count_nonzero(np.isnan(flat)))
    inf = int(np.count_nonzero(np.isinf(flat)))
    first = int(np.flatnonzero(~np.isfinite(flat))[0])
    return (
        f"tensor {name!r} contains NaN or Inf ({nan} NaN, {inf} Inf of {flat.size} values; "
        f"the first at flat index {first}); refusing to code it: tenfold codes finite "
        "values only (a diverged model, or a bad input)"
    )


def _check_name(name: object, seen: set[str]) -> None:
    """Raise for a name the packet cannot carry; record it in ``seen``."""
    if not isinstance(name, str):
        raise InputTypeError(f"tensor names must be str, got {name!r} ({type(name).__name__})")
    if name in seen:  # a plain dict cannot repeat a key; a custom Mapping might
        raise ConfigError(f"duplicate tensor name {name!r}")
    seen.add(name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"tensor name {name!r} is not encodable as UTF-8") from None


def _size_hint(value: ArrayLike) -> int:
    """About how many values ``value`` holds (for scheduling only; 0 when unknown)."""
    if isinstance(value, BFloat16Bits):
        return int(value.bits.size)
    numel = getattr(value, "numel", None)  # torch
    if callable(numel):
        return int(numel())
    size = getattr(value, "size", 0)
    return size if isinstance(size, int) else 0


def _code_one(
    name: str,
    value: ArrayLike,
    policy: Policy,
    position: int,
    grad_rms: Mapping[str, float] | None,
    scale: float | None,
    threads: int,
) -> tuple[list[bytes | np.ndarray], bool, WireDtype]:
    """One tensor's record, whether it needs version 2, and its wire dtype (a thread's task).

    Depends on nothing but its arguments: the policy's sampling seed comes from
    ``position``, so the record is the same whichever thread codes it, in whatever order;
    ``threads`` only splits its element-wise passes (exact whatever the split).
    """
    arr, wire = _as_float_array(name, value)
    record, needs_v2 = _encode_tensor(
        name, arr, wire, policy, position, grad_rms, scale, threads=threads
    )
    return record, needs_v2, wire


def _encode_tensor(
    name: str,
    arr: np.ndarray,
    wire: WireDtype,
    policy: Policy,
    position: int,
    grad_rms: Mapping[str, float] | None,
    scale: float | None,
    *,
    threads: int = 1,
) -> tuple[list[bytes | np.ndarray], bool]:
    """One tensor's record (header and payload chunks), and whether it needs version 2.

    ``arr`` holds the values in ``wire.dtype`` (float32 for bfloat16, exact). ``threads``
    splits the element-wise passes (range, quantization, histograms) of a large tensor
    into chunks; the policy's decision and the entropy coder run in one thread.
    """
    shape = arr.shape
    n = arr.size
    width = wire.width
    common: dict[str, Any] = {"name": name, "dtype": wire, "shape": shape}
    if n == 0:
        header = encode_record_header(
            **common, mode=MODE_RAW, bits=width, entropy=None, w_min=0.0, w_max=0.0
        )
        return [header], False
    x = kernel_view(arr)
    w_min, w_max, finite = finite_min_max(x, threads)
    if not finite:
        raise ConfigError(_nonfinite_message(name, x))
    if policy.lossless:
        return _raw_record(common, arr, width, None, w_min, w_max), False
    if w_min == w_max:
        header = encode_record_header(
            **common, mode=MODE_CONSTANT, bits=0, entropy=None, w_min=w_min, w_max=w_max
        )
        return [header], False
    if isinstance(policy, StepPolicy):
        return _encode_step_tensor(
            common, arr, x, policy, position, scale, w_min, w_max, threads=threads
        )
    record = _encode_range_tensor(
        common, arr, x, policy, position, grad_rms, w_min, w_max, threads=threads
    )
    return record, False


def _encode_range_tensor(
    common: dict[str, Any],
    arr: np.ndarray,
    x: np.ndarray,
    policy: Policy,
    position: int,
    grad_rms: Mapping[str, float] | None,
    w_min: float,
    w_max: float,
    *,
    threads: int = 1,
) -> list[bytes | np.ndarray]:
    """A min/max-binned record (the paper's quantizer): huffman, bitpack or raw."""
    name, wire, n = common["name"], common["dtype"], arr.size
    width = wire.width
    bits, entropy = policy.choose_bits(
        x, w_min, w_max, name=name, position=position, grad_rms=grad_rms
    )
    # a custom Policy subclass must not be able to write an unreadable packet
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 24:
        raise ConfigError(f"{policy!r} chose bits={bits!r} for {name!r}; need an int in [1, 24]")
    if entropy is not None and not 0.0 <= float(entropy) <= 24.0:
        raise ConfigError(f"{policy!r} returned entropy {entropy!r} for {name!r}; need [0, 24]")
    bits = int(bits)
    q = Quantizer.for_range(w_min, w_max, bits)

    # Candidate sizes (payload + mode-specific header bytes); the smallest wins, ties go to
    # the simplest mode (raw, then bitpack, then huffman).
    raw_size = n * wire.nbytes
    best_mode, best_size = MODE_RAW, raw_size
    if bits < width:
        pack_size = bitpack.packed_nbytes(n, bits)
        if pack_size < best_size:
            best_mode, best_size = MODE_BITPACK, pack_size
    huff: tuple[int, np.ndarray, bytes, np.ndarray] | None = None
    if bits <= 16:
        idx, hist = quantize_histogram(x, q, threads)
        huff = _huffman_candidate(hist)
        if huff is not None and huff[0] < best_size:
            best_mode, best_size = MODE_HUFFMAN, huff[0]
    elif best_mode == MODE_BITPACK:
        idx = quantize(x, q, threads)

    if best_mode == MODE_RAW:
        return _raw_record(common, arr, width, entropy, w_min, w_max)
    if best_mode == MODE_BITPACK:
        header = encode_record_header(
            **common, mode=MODE_BITPACK, bits=bits, entropy=entropy, w_min=w_min, w_max=w_max
        )
        return [header, bitpack.encode(idx, bits)]
    assert huff is not None
    _, lengths, table, sizes = huff
    header = encode_record_header(
        **common,
        mode=MODE_HUFFMAN,
        bits=bits,
        entropy=entropy,
        w_min=w_min,
        w_max=w_max,
        table=table,
        stream_nbytes=[int(s) for s in sizes],
    )
    return [header, *huffman.encode(idx, lengths, sizes)]


def _huffman_candidate(hist: np.ndarray) -> tuple[int, np.ndarray, bytes, np.ndarray] | None:
    """``(size, lengths, table, stream sizes)`` of Huffman-coding symbols with this
    per-stream histogram, or None when Huffman cannot code them (one or too many symbols)."""
    total = hist.sum(axis=0)
    limit = huffman.length_limit(int(np.count_nonzero(total)))
    if limit is None:
        return None
    lengths = huffman.code_lengths(total, limit)
    sizes = (huffman.stream_bits(hist, lengths) + 7) // 8
    table = huffman.pack_lengths(lengths)
    size = (
        varint_len(len(table))
        + len(table)
        + sum(varint_len(int(s)) for s in sizes)
        + int(sizes.sum())
    )
    return size, lengths, table, sizes


def _huffman_floor(n: int) -> int:
    """The fewest payload bytes a Huffman record of ``n`` values can have: each value costs
    at least a bit (Huffman codes two or more symbols), so ``ceil(n / 8)``."""
    return -(-n // 8)


def _ans_lanes(
    sym: np.ndarray, freq: np.ndarray, scale_bits: int, table: bytes
) -> tuple[list[np.ndarray], int]:
    """``sym`` ANS-coded, and the record's ANS bytes (lanes and :func:`_ans_overhead`)."""
    lanes = ans.encode(sym, freq, scale_bits)
    sizes = [len(lane) for lane in lanes]
    return lanes, sum(sizes) + _ans_overhead(table, sizes)


def _ans_overhead(table: bytes, lanes: list[int]) -> int:
    """ANS bytes besides the lanes: precision byte, table size and table, lane sizes."""
    return 1 + varint_len(len(table)) + len(table) + sum(varint_len(s) for s in lanes)


def _encode_step_tensor(
    common: dict[str, Any],
    arr: np.ndarray,
    x: np.ndarray,
    policy: StepPolicy,
    position: int,
    scale: float | None,
    w_min: float,
    w_max: float,
    *,
    threads: int = 1,
) -> tuple[list[bytes | np.ndarray], bool]:
    """A mid-tread record: constant, ans, huffman or bitpack, or raw when that is smaller.

    Every candidate's size is exact (ANS is encoded to be measured when its estimate
    could win); the smallest wins, ties to the simpler mode (raw, bitpack, huffman, ans).
    """
    name = common["name"]
    step, entropy = policy.choose_step(x, w_min, w_max, name=name, position=position, scale=scale)
    if not (isinstance(step, float) and np.isfinite(step) and step > 0):
        raise ConfigError(f"{policy!r} chose step={step!r} for {name!r}; need a finite float > 0")
    return _step_record(common, arr, x, step, entropy, policy.coder, w_min, w_max, threads=threads)


def _step_record(
    common: dict[str, Any],
    arr: np.ndarray,
    x: np.ndarray,
    step: float,
    entropy: float | None,
    coder: str,
    w_min: float,
    w_max: float,
    *,
    threads: int = 1,
) -> tuple[list[bytes | np.ndarray], bool]:
    """A mid-tread record with this step (see :func:`_encode_step_tensor`)."""
    wire, n = common["dtype"], arr.size
    width = wire.width
    q = StepQuantizer.for_range(w_min, w_max, step)
    lut = wire.cast(midtread_lut(q.qmin, q.step, q.bits, _F64))
    if not np.isfinite(lut).all():  # levels beyond the dtype's range (float16 extremes)
        return _raw_record(common, arr, width, entropy, w_min, w_max), False
    step_fields: dict[str, Any] = {"quant": QUANT_STEP, "step": q.step, "qmin": q.qmin}
    if q.bits == 0:  # every value rounds to the same level (often 0: nothing moved)
        clamped = 0
        if q.needs_clamp:  # rare: count the values whose own level lies beyond the clamp
            levels = np.floor(x.astype(np.float64) * q.inv + 0.5)
            clamped = int(np.count_nonzero(levels != q.qmin))
        header = encode_record_header(
            **common, **step_fields, clamped=clamped, mode=MODE_CONSTANT, bits=0,
            entropy=entropy, w_min=w_min, w_max=w_max,
        )  # fmt: skip
        return [header], True
    sym, hist, clamped = midtread_symbols(x, q, threads)
    step_fields["clamped"] = clamped
    bits = q.bits
    best_mode, best_size = MODE_RAW, n * wire.nbytes
    if bits < width and bitpack.packed_nbytes(n, bits) < best_size:
        best_mode, best_size = MODE_BITPACK, bitpack.packed_nbytes(n, bits)
    lanes: list[np.ndarray] = []
    ans_table, scale_bits, ans_size, estimate = b"", 0, -1, 0
    huffman_floor = _huffman_floor(n)
    if coder == "auto":
        counts = hist.sum(axis=0)
        scale_bits = ans.scale_bits_for(int(np.count_nonzero(counts)))
        freq = ans.quantize_frequencies(counts, scale_bits)
        ans_table = ans.pack_frequencies(freq)
        estimate = ans.estimate_nbytes(counts, freq, scale_bits)
        estimate += _ans_overhead(ans_table, [0] * ans.LANES)
        if estimate < huffman_floor:
            lanes, ans_size = _ans_lanes(sym, freq, scale_bits, ans_table)
    # ANS coded first (where its estimate is below Huffman's floor) and smaller than that
    # floor wins whatever Huffman's size: Huffman is then not built
    huff = None if 0 <= ans_size < huffman_floor else _huffman_candidate(hist)
    if huff is not None and huff[0] < best_size:
        best_mode, best_size = MODE_HUFFMAN, huff[0]
    if coder == "auto":
        # the real size is at most the estimate and more than it minus 9 bytes
        if ans_size < 0 and estimate < best_size + 16:
            lanes, ans_size = _ans_lanes(sym, freq, scale_bits, ans_table)
        if 0 <= ans_size < best_size:
            best_mode, best_size = MODE_ANS, ans_size
    if best_mode == MODE_RAW:
        return _raw_record(common, arr, width, entropy, w_min, w_max), False
    record = {**common, **step_fields, "bits": bits, "entropy": entropy}
    record.update(w_min=w_min, w_max=w_max)
    if best_mode == MODE_BITPACK:
        header = encode_record_header(**record, mode=MODE_BITPACK)
        return [header, bitpack.encode(sym, bits)], True
    if best_mode == MODE_ANS:
        header = encode_record_header(
            **record, mode=MODE_ANS, scale_bits=scale_bits, table=ans_table,
            stream_nbytes=[len(lane) for lane in lanes],
        )  # fmt: skip
        return [header, *lanes], True
    assert huff is not None
    _, lengths, table, sizes = huff
    header = encode_record_header(
        **record, mode=MODE_HUFFMAN, table=table, stream_nbytes=[int(v) for v in sizes]
    )
    return [header, *huffman.encode(sym, lengths, sizes)], True


def _raw_record(
    common: dict[str, Any],
    arr: np.ndarray,
    width: int,
    entropy: float | None,
    w_min: float,
    w_max: float,
) -> list[bytes | np.ndarray]:
    """A raw record: the values, little-endian, in the wire dtype (bfloat16: 2 bytes each,
    the top half of each float32, so carrying them loses nothing)."""
    header = encode_record_header(
        **common, mode=MODE_RAW, bits=width, entropy=entropy, w_min=w_min, w_max=w_max
    )
    return [header, common["dtype"].to_wire(arr)]


# ---- decode -----------------------------------------------------------------------------


def _decode_record(
    data: np.ndarray,
    rec: Record,
    out: np.ndarray,
    *,
    add: bool,
    levels: np.ndarray | None = None,
    plus_zero: bool = False,
    streaming: bool = False,
) -> None:
    """Decode one record into the 1-D ``out`` (its dtype), or add it into ``out``.

    ``levels``: the packet's group levels (:func:`_group_levels`), for group members.
    ``plus_zero`` (with ``add=False``): write ``+0.0 + value``, what adding into zeros
    writes (a -0.0 becomes +0.0), from a sign-cleared table where there is one.
    ``streaming``: the pair and quad decoders may write ``out`` with non-temporal stores
    (``ans.STREAM_MIN_BYTES``).
    """
    info = rec.info
    n = info.num_values
    if n == 0:
        return
    zero = out.dtype.type(0)
    if rec.mode == MODE_GROUP:
        assert levels is not None
        values = member_values(levels, rec)
        if add:
            out += values
        elif plus_zero:
            np.add(values, zero, out=out)
        else:
            out[...] = values
        return
    if rec.mode == MODE_CONSTANT and rec.quant != QUANT_STEP:
        value = rec.dtype.type(info.w_min)
        if add:
            out += value
        else:
            out[...] = value + zero if plus_zero else value
        return
    if rec.mode == MODE_RAW:
        values = rec.wire.from_wire(data, n, rec.payload_start)
        lo, hi, finite = finite_min_max(values)
        if not finite or lo != info.w_min or hi != info.w_max:
            raise CorruptPacketError(
                f"tensor {info.name!r}: raw values span [{lo}, {hi}], header says "
                f"[{info.w_min}, {info.w_max}]"
            )
        if add:
            out += values
        elif plus_zero:
            np.add(values, zero, out=out)
        else:
            out[...] = values
        return
    # float16 outputs are written as their uint16 bit patterns (numba has no float16 loads
    # and stores); decode-only, since accumulators are float32/float64.
    target = out.view(np.uint16) if out.dtype == np.float16 else out
    # out.dtype == rec.dtype (decompress allocates it, accumulate checks it), so the LUT's
    # values are what decompress returns, rounded to the wire dtype (bfloat16 included).
    lut: np.ndarray | None = None
    if rec.quant == QUANT_STEP or info.bits <= _MAX_LUT_BITS:
        lut = rec.lut() + zero if plus_zero else rec.lut()
        if out.dtype == np.float16:
            lut = lut.view(np.uint16)
    # Without a LUT the kernels round to out.dtype, not to bfloat16; bfloat16 never gets
    # here: its bitpack records have N <= 15 and huffman/ans N <= 16.
    assert lut is not None or not rec.wire.is_bfloat16
    if rec.mode == MODE_CONSTANT:  # a mid-tread record whose values share one level
        assert lut is not None
        if add:
            out += out.dtype.type(rec.lut()[0])
        else:
            target[...] = lut[0]
        return
    if rec.mode == MODE_BITPACK:
        ok = bitpack.decode(
            data, rec.payload_start, rec.payload_end, rec.quantizer if lut is None else None,
            lut, target, add=add, bits=info.bits,
        )  # fmt: skip
        if not ok:
            raise CorruptPacketError(f"tensor {info.name!r}: bit-packed payload has bad padding")
        if plus_zero and lut is None:  # values computed in the kernel: clear -0.0 after
            np.add(out, zero, out=out)
        return
    assert lut is not None and rec.stream_starts is not None and rec.stream_ends is not None
    if rec.mode in (MODE_ANS, MODE_ANS_PAIRS, MODE_ANS_QUADS):
        assert rec.freq is not None
        starts, ends = rec.stream_starts, rec.stream_ends
        if rec.mode == MODE_ANS_QUADS:
            quads = ansquads.build_quad_table(rec.freq, rec.scale_bits, lut, info.bits)
            status = ansquads.decode_quads(
                data, starts, ends, quads, target, add=add, streaming=streaming
            )
        elif rec.mode == MODE_ANS_PAIRS:
            pairs = anspairs.build_pair_table(rec.freq, rec.scale_bits, lut, info.bits)
            status = anspairs.decode_pairs(
                data, starts, ends, pairs, target, add=add, streaming=streaming
            )
        else:
            singles = ans.build_decode_table(rec.freq, rec.scale_bits, lut)
            status = ans.decode(data, starts, ends, singles, target, add=add)
        if status:
            raise CorruptPacketError(
                f"tensor {info.name!r}: ANS lane {status - 1} does not decode to exactly "
                f"its declared size and final state (corrupt payload)"
            )
        return
    assert rec.lengths is not None
    table = huffman.build_decode_table(rec.lengths, lut)
    status = huffman.decode(data, rec.stream_starts, rec.stream_ends, table, target, add=add)
    if status:
        raise CorruptPacketError(
            f"tensor {info.name!r}: Huffman stream {status - 1} does not decode to exactly "
            f"its declared size (corrupt payload)"
        )


def decompress(
    blob: bytes | bytearray | memoryview | np.ndarray,
    *,
    out: Mapping[str, np.ndarray] | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Decode a packet (paper Alg. 2) into ``{name: array}``: same names, shapes, dtypes, order.

    The arrays are views into one buffer allocated for them all (so it can use huge
    pages): the memory is returned when the last of them is gone. With ``out`` the
    values are written into the caller's arrays instead, and those are returned: a loop
    that decodes packets of one layout into the same arrays skips the allocation, and
    the operating system's zeroing of fresh pages, that a new buffer costs each call
    (``tenfold bench`` measures both).

    numpy has no bfloat16, so a bfloat16 tensor comes back as a float32 array holding its
    exact bfloat16 values (``inspect`` says ``"bfloat16"``): ``torch.from_numpy(a).to(
    torch.bfloat16)`` or :meth:`BFloat16Bits.from_float` then recovers it exactly.

    Args:
        blob: the packet (bytes-like or a uint8 array).
        out: None, or name -> C-contiguous writeable array, no two sharing memory, whose
            names, order, shapes and dtypes equal the packet's as ``decompress`` returns
            them (float32 for a bfloat16 tensor): e.g. the result of an earlier call on a
            packet of the same layout. Every value is overwritten.
        max_output_bytes: refuse packets whose tensors would need more memory than this
            (checked from the header, before any allocation).
        threads: how many threads decode the tensors (one task per tensor, after the
            packet has been validated): None (the default) uses every core this process
            may run on, 1 decodes in the calling thread. The result does not depend on it.

    Returns:
        ``{name: array}`` in the packet's order: new arrays, or ``out``'s own.

    Raises:
        CorruptPacketError: the bytes are not a valid packet (the message says why). The
            header is fully validated (checksum included) before anything is written; only
            a payload corrupt *under a valid checksum* is found while decoding, leaving
            ``out`` partly written.
        PacketMismatchError: the packet's tensors differ from ``out``'s (names the first).
        TypeError: ``blob`` is not bytes-like; ``out`` is not a mapping of numpy arrays.
        ValueError: ``threads`` is not None or an int >= 1; an array of ``out`` is not
            C-contiguous and writeable, or two of them overlap.

    Example:
        >>> from tenfold.codec import TargetRate, compress
        >>> x = {"w": np.linspace(-1, 1, 4096, dtype=np.float32)}
        >>> y = decompress(compress(x, TargetRate(4.0)))
        >>> z = decompress(compress({"w": 2 * x["w"]}, TargetRate(4.0)), out=y)
        >>> z["w"] is y["w"]
        True
    """
    workers = resolve_threads(threads)
    targets = None if out is None else _out_arrays(out, float_only=False)
    data = _as_packet_bytes(blob)
    packet = parse(data, _check_max_output(max_output_bytes))
    if targets is None:
        # Not streamed: the kernel has just zeroed the fresh pages through the caches, and
        # ordinary stores into those lines measured as fast or faster (11.7-12.0 ms against
        # 12.0-13.1 streamed, the CharGPT set at 1 bit/param)
        decoding = _Decoding()
        decoding.allocate_records(packet.records)
        return decoding.decode(data, packet.records, list(range(len(packet.records))), workers)
    _check_match(packet.records, targets)
    if _any_overlap([arr for _, arr in targets]):
        # each record's values would overwrite another's: no order makes that a decoding
        raise ConfigError("out: two of its arrays share memory; give each tensor its own")
    arrays = [arr for _, arr in targets]
    # existing arrays larger than the caches are written past them (ans.STREAM_MIN_BYTES)
    streaming = sum(arr.nbytes for arr in arrays) >= ans.STREAM_MIN_BYTES
    _decode_into(data, packet.records, arrays, add=False, workers=workers, streaming=streaming)
    return dict(targets)


def _out_arrays(out: Mapping[str, np.ndarray], *, float_only: bool) -> list[tuple[str, np.ndarray]]:
    """``out``'s (name, array) pairs, checked to be numpy arrays (float32/float64 ones if
    ``float_only``), C-contiguous and writeable."""
    if not isinstance(out, Mapping):
        raise InputTypeError(f"out must be a mapping of name -> array, got {type(out)!r}")
    targets = list(out.items())
    for name, arr in targets:
        if not isinstance(arr, np.ndarray):
            raise InputTypeError(f"out[{name!r}] must be a numpy array, got {type(arr)!r}")
        if float_only and arr.dtype not in (np.float32, np.float64):
            raise InputTypeError(f"out[{name!r}] must be a float32 or float64 numpy array")
        if not (arr.flags.c_contiguous and arr.flags.writeable):
            raise ConfigError(f"out[{name!r}] must be C-contiguous and writeable")
    return targets


def _decode_into(
    data: np.ndarray,
    records: list[Record],
    arrays: list[np.ndarray],
    *,
    add: bool,
    workers: int,
    plus_zero: bool = False,
    streaming: bool = False,
) -> None:
    """Decode (``add``: and add; ``plus_zero``: as ``+0.0 + value``) every record into its
    array, a task per record on up to ``workers`` threads (each writes only its own array;
    ``streaming`` as :func:`_decode_record`'s)."""
    sizes = [rec.info.num_values for rec in records]
    levels = _group_levels(data, records)
    tasks = [
        partial(
            _decode_record, data, rec, arr.reshape(-1), add=add, levels=levels,
            plus_zero=plus_zero, streaming=streaming,
        )
        for rec, arr in zip(records, arrays, strict=True)
    ]  # fmt: skip
    run_in_order(tasks, useful_threads(workers, sum(sizes)), sizes)


def _group_levels(data: np.ndarray, records: list[Record]) -> np.ndarray | None:
    """The levels of the packet's group section (None when it has none)."""
    members = [rec for rec in records if rec.mode == MODE_GROUP]
    if not members:
        return None
    levels = decode_group(data, members)
    if levels is None:
        raise CorruptPacketError(
            "group section: an ANS lane does not decode to exactly its declared size and "
            "final state (corrupt payload)"
        )
    return levels


def inspect(
    blob: bytes | bytearray | memoryview | np.ndarray,
    *,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> PacketInfo:
    """Describe a packet without decoding its payloads.

    Checks the checksum and every header field (as ``decompress`` does) but not the
    Huffman streams' contents, so it costs a CRC pass plus microseconds per tensor.

    Raises:
        CorruptPacketError: the bytes are not a valid packet.
    """
    return parse(_as_packet_bytes(blob), _check_max_output(max_output_bytes)).info


def accumulate(
    blob: bytes | bytearray | memoryview | np.ndarray,
    out: Mapping[str, np.ndarray],
    *,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    threads: int | None = None,
    overwrite: bool = False,
) -> PacketInfo:
    """Add a packet's decoded tensors into ``out`` in place (fused decode-and-add).

    ``acc = zeros; for blob in blobs: accumulate(blob, acc)`` is deterministic and bit-equal
    to ``acc[name] += decompress(blob)[name]`` in the same order, without a temporary
    full-size array. ``overwrite=True`` for the first packet gives the same sums without
    zeroing ``acc``: it writes what adding into zeros would.

    Args:
        blob: the packet.
        out: name -> float32/float64 C-contiguous writeable array; names, order, shapes and
            dtypes must equal the packet's, where a bfloat16 tensor's dtype is float32
            (what :func:`decompress` returns for it).
        max_output_bytes: as for :func:`decompress`.
        threads: how many threads decode and add (one task per tensor; each adds into its
            own array, so the sums are the serial path's bit for bit): None (the default)
            uses every core this process may run on, 1 works in the calling thread. When
            two of ``out``'s arrays overlap in memory the tensors are added one after the
            other whatever ``threads`` says (two threads adding into the same memory
            would race).
        overwrite: write ``+0.0 + value`` (bit for bit what adding into arrays of +0.0
            writes: a decoded -0.0 becomes +0.0) instead of adding; ``out``'s values
            are never read, so it needs no zeroing (its arrays must not overlap).

    Returns:
        The packet's :class:`PacketInfo`.

    Raises:
        CorruptPacketError: invalid bytes. The header is fully validated (checksum
            included) before anything is added; only a payload that is corrupt *under a
            valid checksum* (a broken encoder) is found while adding, leaving ``out``
            partly updated.
        PacketMismatchError: the packet's tensors differ from ``out``'s (names the first).
        TypeError / ValueError: ``out`` holds unsupported arrays; ``threads`` is not None
            or an int >= 1; ``overwrite`` with two of ``out``'s arrays overlapping
            (ValueError).
    """
    workers = resolve_threads(threads)
    if not isinstance(overwrite, bool):
        raise InputTypeError(f"overwrite must be a bool, got {overwrite!r}")
    targets = _out_arrays(out, float_only=True)
    data = _as_packet_bytes(blob)
    packet = parse(data, _check_max_output(max_output_bytes))
    _check_match(packet.records, targets)
    if (workers > 1 or overwrite) and _any_overlap([arr for _, arr in targets]):
        if overwrite:  # zeroing then adding would sum the overlap; writing keeps one value
            raise ConfigError("out: two of its arrays share memory; overwrite needs their own")
        workers = 1
    arrays = [arr for _, arr in targets]
    _decode_into(
        data, packet.records, arrays, add=not overwrite, workers=workers, plus_zero=overwrite
    )
    return packet.info


def _any_overlap(arrays: list[np.ndarray]) -> bool:
    """Whether any two of these C-contiguous arrays share a byte (O(k log k) in k arrays)."""
    spans = sorted(
        (a.__array_interface__["data"][0], a.__array_interface__["data"][0] + a.nbytes)
        for a in arrays
        if a.nbytes
    )
    return any(nxt[0] < prev[1] for prev, nxt in zip(spans, spans[1:], strict=False))


def _check_match(records: list[Record], targets: list[tuple[str, np.ndarray]]) -> None:
    for i, (rec, (name, arr)) in enumerate(zip(records, targets, strict=False)):
        info = rec.info
        if info.name != name:
            raise PacketMismatchError(
                f"tensor {i}: packet has {info.name!r}, receiver expects {name!r}"
            )
        if tuple(arr.shape) != info.shape:
            raise PacketMismatchError(
                f"tensor {name!r}: packet shape {info.shape}, receiver shape {tuple(arr.shape)}"
            )
        # rec.dtype is the dtype decompress returns: float32 for a bfloat16 record. Only
        # that one: adding the same values into another dtype would round differently
        # from `acc += decompress(blob)[name]`, which accumulate promises to equal.
        if arr.dtype != rec.dtype:
            held = f" (decoded as {rec.dtype.name})" if rec.wire.is_bfloat16 else ""
            raise PacketMismatchError(
                f"tensor {name!r}: packet dtype {info.dtype}{held}, receiver dtype {arr.dtype}"
            )
    if len(records) != len(targets):
        if len(records) > len(targets):
            extra = records[len(targets)].info.name
            raise PacketMismatchError(
                f"packet has {len(records)} tensors, receiver {len(targets)}: "
                f"unexpected tensor {extra!r}"
            )
        missing = targets[len(records)][0]
        raise PacketMismatchError(
            f"packet has {len(records)} tensors, receiver {len(targets)}: "
            f"tensor {missing!r} is missing"
        )
