"""The public functions: compress, decompress, inspect, accumulate.

See the package docstring (``tenfold.codec``) for the contract and docs/FORMAT.md for the
bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from tenfold.codec import ans, bitpack, huffman
from tenfold.codec.bfloat16 import BFloat16Bits
from tenfold.codec.errors import CorruptPacketError, PacketMismatchError
from tenfold.codec.midtread import StepQuantizer, midtread_lut, midtread_symbols
from tenfold.codec.packet import (
    BFLOAT16,
    DEFAULT_MAX_OUTPUT_BYTES,
    MODE_ANS,
    MODE_BITPACK,
    MODE_CONSTANT,
    MODE_HUFFMAN,
    MODE_RAW,
    QUANT_STEP,
    PacketInfo,
    Record,
    WireDtype,
    encode_record_header,
    finish_packet,
    packet_header,
    parse,
    varint,
    wire_dtype,
)
from tenfold.codec.parallel import resolve_threads, run_in_order, useful_threads
from tenfold.codec.policy import EntropyAdaptive, Policy, StepPolicy
from tenfold.codec.quantize import (
    Quantizer,
    finite_min_max,
    kernel_view,
    quantize,
    quantize_histogram,
)

__all__ = ["accumulate", "compress", "decompress", "inspect"]

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
        raise TypeError(
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
            raise TypeError(f"a packet array must have dtype uint8, got {blob.dtype}")
        return np.ascontiguousarray(blob).reshape(-1)
    if isinstance(blob, (bytes, bytearray, memoryview)):
        try:
            mv = memoryview(blob).cast("B")
        except TypeError as exc:  # non-contiguous memoryview
            raise TypeError(f"a packet memoryview must be C-contiguous ({exc})") from None
        return np.frombuffer(mv, dtype=np.uint8)
    raise TypeError(
        f"a packet must be bytes, bytearray, memoryview or a uint8 array, got {type(blob)!r}"
    )


def _check_max_output(max_output_bytes: int) -> int:
    if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int):
        raise TypeError("max_output_bytes must be an int")
    if max_output_bytes < 0:
        raise ValueError("max_output_bytes must be >= 0")
    return max_output_bytes


# ---- compress ---------------------------------------------------------------------------


def compress(
    tensors: Mapping[str, ArrayLike],
    policy: Policy = EntropyAdaptive(),  # noqa: B008 - frozen, immutable default
    *,
    grad_rms: Mapping[str, float] | None = None,
    scale: Mapping[str, float] | None = None,
    threads: int | None = None,
) -> bytes:
    """Code named float tensors into one self-describing packet (paper Alg. 1).

    Args:
        tensors: name -> numpy array or CPU torch tensor (float16/32/64 or bfloat16, any
            shape, 0-d and empty included). numpy has no bfloat16: pass a torch.bfloat16
            tensor or :class:`~tenfold.codec.BFloat16Bits` (its uint16 bit patterns); its
            record says bfloat16 and its raw values take 2 bytes. Names are unique
            strings; order is kept.
        policy: how each tensor is quantized (:class:`EntropyAdaptive` by default; the
            step policies :class:`~tenfold.codec.policy.RelativeStep` and
            :class:`~tenfold.codec.policy.TargetRate` use the mid-tread quantizer).
        grad_rms: per-tensor RMS gradient G, required by :class:`GradientRMS`.
        scale: per-tensor RMS for :class:`~tenfold.codec.policy.RelativeStep` to take its
            step from, instead of the values' own (the averager passes the fresh delta's
            RMS when the values include an error-feedback residual).
        threads: how many threads code the tensors: None (the default) uses every core
            this process may run on (its CPU affinity), 1 codes them one after the other
            in the calling thread. Tensors are coded in parallel (one task per tensor, the
            largest first); the packet's bytes do not depend on this setting. Threads
            left over (fewer tensors than threads) split a large tensor's element-wise
            passes; its entropy coding runs in one thread. The policy's ``choose_bits`` /
            ``choose_step`` is then called from several threads at once: the built-in
            policies are stateless; a custom policy must be too (or pass ``threads=1``).

    Returns:
        The packet (bytes). ``8 * len(packet) / total values`` is the true bits/param.

    Raises:
        TypeError: non-mapping input, non-str names, non-float dtypes.
        ValueError: NaN/Inf values (message names the tensor), bad policy inputs, a
            ``threads`` that is not None or an int >= 1.

    Example:
        >>> import numpy as np, tenfold
        >>> w = np.linspace(-1, 1, 1000, dtype=np.float32)
        >>> blob = compress({"w": w}, tenfold.Fixed(8))
        >>> out = decompress(blob)["w"]
        >>> bool(np.abs(out - w).max() <= 2 / 2**9 + 1e-6)
        True
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> array, got {type(tensors)!r}")
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a tenfold policy (e.g. Fixed(8)), got {policy!r}")
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


def _check_name(name: object, seen: set[str]) -> None:
    """Raise for a name the packet cannot carry; record it in ``seen``."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {name!r} ({type(name).__name__})")
    if name in seen:  # a plain dict cannot repeat a key; a custom Mapping might
        raise ValueError(f"duplicate tensor name {name!r}")
    seen.add(name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"tensor name {name!r} is not encodable as UTF-8") from None


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
        raise ValueError(f"tensor {name!r} contains NaN or Inf; refusing to code it")
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
        raise ValueError(f"{policy!r} chose bits={bits!r} for {name!r}; need an int in [1, 24]")
    if entropy is not None and not 0.0 <= float(entropy) <= 24.0:
        raise ValueError(f"{policy!r} returned entropy {entropy!r} for {name!r}; need [0, 24]")
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
        len(varint(len(table)))
        + len(table)
        + sum(len(varint(int(s))) for s in sizes)
        + int(sizes.sum())
    )
    return size, lengths, table, sizes


def _ans_overhead(table: bytes, lanes: list[int]) -> int:
    """ANS bytes besides the lanes: precision byte, table size and table, lane sizes."""
    return 1 + len(varint(len(table))) + len(table) + sum(len(varint(s)) for s in lanes)


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
    name, wire, n = common["name"], common["dtype"], arr.size
    width = wire.width
    step, entropy = policy.choose_step(x, w_min, w_max, name=name, position=position, scale=scale)
    if not (isinstance(step, float) and np.isfinite(step) and step > 0):
        raise ValueError(f"{policy!r} chose step={step!r} for {name!r}; need a finite float > 0")
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
    huff = _huffman_candidate(hist)
    if huff is not None and huff[0] < best_size:
        best_mode, best_size = MODE_HUFFMAN, huff[0]
    lanes: list[np.ndarray] = []
    ans_table, scale_bits = b"", 0
    if policy.coder == "auto":
        counts = hist.sum(axis=0)
        scale_bits = ans.scale_bits_for(int(np.count_nonzero(counts)))
        freq = ans.quantize_frequencies(counts, scale_bits)
        ans_table = ans.pack_frequencies(freq)
        estimate = ans.estimate_nbytes(counts, freq, scale_bits)
        if estimate + _ans_overhead(ans_table, [0] * ans.LANES) < best_size + 16:
            lanes = ans.encode(sym, freq, scale_bits)
            size = sum(len(lane) for lane in lanes)
            size += _ans_overhead(ans_table, [len(lane) for lane in lanes])
            if size < best_size:
                best_mode, best_size = MODE_ANS, size
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


def _decode_record(data: np.ndarray, rec: Record, out: np.ndarray, *, add: bool) -> None:
    """Decode one record into the 1-D ``out`` (its dtype), or add it into ``out``."""
    info = rec.info
    n = info.num_values
    if n == 0:
        return
    if rec.mode == MODE_CONSTANT and rec.quant != QUANT_STEP:
        value = rec.dtype.type(info.w_min)
        if add:
            out += value
        else:
            out[...] = value
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
        lut = rec.lut()
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
        return
    assert lut is not None and rec.stream_starts is not None and rec.stream_ends is not None
    if rec.mode == MODE_ANS:
        assert rec.freq is not None
        tables = ans.build_decode_table(rec.freq, rec.scale_bits, lut)
        status = ans.decode(data, rec.stream_starts, rec.stream_ends, tables, target, add=add)
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
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Decode a packet (paper Alg. 2) into ``{name: array}``: same names, shapes, dtypes, order.

    numpy has no bfloat16, so a bfloat16 tensor comes back as a float32 array holding its
    exact bfloat16 values (``inspect`` says ``"bfloat16"``): ``torch.from_numpy(a).to(
    torch.bfloat16)`` or :meth:`BFloat16Bits.from_float` then recovers it exactly.

    Args:
        blob: the packet (bytes-like or a uint8 array).
        max_output_bytes: refuse packets whose tensors would need more memory than this
            (checked from the header, before any allocation).
        threads: how many threads decode the tensors (one task per tensor, after the
            packet has been validated): None (the default) uses every core this process
            may run on, 1 decodes in the calling thread. The result does not depend on it.

    Raises:
        CorruptPacketError: the bytes are not a valid packet (the message says why).
        TypeError: ``blob`` is not bytes-like.
        ValueError: ``threads`` is not None or an int >= 1.
    """
    workers = resolve_threads(threads)
    data = _as_packet_bytes(blob)
    packet = parse(data, _check_max_output(max_output_bytes))
    sizes = [rec.info.num_values for rec in packet.records]
    tasks = [partial(_decode_new, data, rec) for rec in packet.records]
    arrays = run_in_order(tasks, useful_threads(workers, sum(sizes)), sizes)
    return {rec.info.name: out for rec, out in zip(packet.records, arrays, strict=True)}


def _decode_new(data: np.ndarray, rec: Record) -> np.ndarray:
    """One record decoded into a new array of its shape (a thread's task)."""
    out = np.empty(rec.info.num_values, dtype=rec.dtype.newbyteorder("="))
    _decode_record(data, rec, out, add=False)
    return out.reshape(rec.info.shape)


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
) -> PacketInfo:
    """Add a packet's decoded tensors into ``out`` in place (fused decode-and-add).

    ``acc = zeros; for blob in blobs: accumulate(blob, acc)`` is deterministic and bit-equal
    to ``acc[name] += decompress(blob)[name]`` in the same order, without a temporary
    full-size array.

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

    Returns:
        The packet's :class:`PacketInfo`.

    Raises:
        CorruptPacketError: invalid bytes. The header is fully validated (checksum
            included) before anything is added; only a payload that is corrupt *under a
            valid checksum* (a broken encoder) is found while adding, leaving ``out``
            partly updated.
        PacketMismatchError: the packet's tensors differ from ``out``'s (names the first).
        TypeError / ValueError: ``out`` holds unsupported arrays; ``threads`` is not None
            or an int >= 1 (ValueError).
    """
    workers = resolve_threads(threads)
    if not isinstance(out, Mapping):
        raise TypeError(f"out must be a mapping of name -> array, got {type(out)!r}")
    targets = list(out.items())
    for name, arr in targets:
        if not isinstance(arr, np.ndarray) or arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"out[{name!r}] must be a float32 or float64 numpy array")
        if not (arr.flags.c_contiguous and arr.flags.writeable):
            raise ValueError(f"out[{name!r}] must be C-contiguous and writeable")
    data = _as_packet_bytes(blob)
    packet = parse(data, _check_max_output(max_output_bytes))
    _check_match(packet.records, targets)
    if workers > 1 and _any_overlap([arr for _, arr in targets]):
        workers = 1
    sizes = [rec.info.num_values for rec in packet.records]
    workers = useful_threads(workers, sum(sizes))
    tasks = [
        partial(_decode_record, data, rec, arr.reshape(-1), add=True)
        for rec, (_, arr) in zip(packet.records, targets, strict=True)
    ]
    run_in_order(tasks, workers, sizes)
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
