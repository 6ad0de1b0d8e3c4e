"""tenfold.codec: named float tensors <-> one small, self-describing packet.

The codec contract (written down once; everything else in the package follows it):

* ``compress(tensors, policy, *, grad_rms=None) -> bytes`` takes a mapping of unique ``str``
  names to float16/float32/float64 arrays (numpy, or CPU torch tensors by duck typing: torch
  is never imported here) or bfloat16 tensors (``torch.bfloat16``, or :class:`BFloat16Bits`
  holding the uint16 bit patterns: numpy has no bfloat16), any shape including 0-d and
  empty, and returns ONE packet. NaN or Inf values raise ``ConfigError`` (a ``ValueError``)
  naming the tensor; other dtypes raise ``InputTypeError`` (a ``TypeError``).
* The default policy is :class:`TargetRate` ``(bits_per_param=1.0)``, the library's
  default everywhere (the averagers, ``LocalSGD``, the DDP hook): the zero-centred
  mid-tread quantizer with one step multiplier for the whole packet, chosen so the packet
  costs the target bits per value, headers included; tensors are rANS coded (one, two or
  four values per coder step: format versions 2, 3 and 4), small ones together in the
  packet's group section (version 3).
* The paper's scheme is :class:`EntropyAdaptive` (paper Alg. 1, with the errata of
  docs/DESIGN.md): per tensor ``w_min``, ``w_max``; ``N = ceil(H + c)`` bits, H the
  entropy in bits of an M-bit quantization of a seeded sample of a fraction F; values are
  binned with ``i = floor(2**N (w - w_min) / (w_max - w_min))`` clamped to
  ``[0, 2**N - 1]`` and coded with a canonical, length-limited Huffman code in four
  interleaved streams; the packet carries code *lengths*, not probabilities. When plain
  N-bit packing or the raw values are smaller, that mode is used instead (recorded per
  tensor); constant tensors send one value. The paper's policies (EntropyAdaptive, Fixed,
  GradientRMS, Lossless) write version-1 packets, byte for byte as they always did.
* ``decompress(blob, *, out, max_output_bytes) -> dict[str, np.ndarray]`` returns the same
  names, shapes, dtypes and order (in new arrays, or written into ``out``'s); a bfloat16
  tensor comes back as float32 holding its exact bfloat16 values (decoded values are
  rounded to bfloat16 as torch rounds float32: ``tenfold.codec.bfloat16``). Decoded values are ``w_min + (i + 0.5) Δ`` (clamped to
  the range), so ``|w - w_hat| <= (w_max - w_min) / 2**(N + 1)`` plus the output dtype's
  rounding; constant, raw and empty tensors decode exactly.
* Any bytes given to ``decompress``, ``inspect`` or ``accumulate`` either decode correctly
  or raise :class:`CorruptPacketError` (a ``ValueError``) saying what is wrong: the CRC32
  and every header field are checked, and declared sizes are validated against the blob
  length and ``max_output_bytes`` before anything is allocated or any kernel runs.
* ``accumulate(blob, out)`` adds a packet into float32/float64 accumulators in place with a
  fused decode-and-add, bit-equal to ``out[k] += decompress(blob)[k]`` (float32
  accumulators for bfloat16 tensors); a packet describing
  other tensors raises :class:`PacketMismatchError` naming the first offending one.
  ``overwrite=True`` writes what adding into zeros would, so a sum's first packet needs
  no zeroed accumulators.
* ``compress_and_decode(tensors, policy) -> (bytes, dict, PacketInfo)``: the packet,
  exactly what ``decompress`` returns for it (the TargetRate coder writes each tensor's
  decoding as it codes it: what a sender keeping an error-feedback residual needs) and
  what ``inspect`` says of it.
* ``inspect(blob) -> PacketInfo``: sizes, N, range, entropy and mode per tensor. Bits per
  parameter is always ``8 * len(packet) / values``: headers, tables, padding, CRC included.
* ``compress``, ``decompress`` and ``accumulate`` take ``threads=`` (None, the default:
  every core the process may run on; 1: the calling thread only). Tensors are coded and
  decoded in parallel and assembled in packet order: the bytes and the decoded values do
  not depend on the thread count (``tenfold.codec.parallel``).
* Same inputs and policy (seed included) give identical bytes. Policies are frozen
  dataclasses with JSON-safe ``get_config()`` / ``Policy.from_config()``.

The wire format is specified byte by byte in ``docs/FORMAT.md``.

Example:
    >>> import numpy as np
    >>> from tenfold.codec import compress, decompress, inspect, EntropyAdaptive
    >>> w = np.random.default_rng(0).laplace(0, 0.05, (392, 784)).astype(np.float32)
    >>> blob = compress({"fc1.weight": w}, EntropyAdaptive(F=0.03, M=4, c=6, seed=0))
    >>> info = inspect(blob)
    >>> info.tensors[0].mode, info.bits_per_param < 8
    ('huffman', True)
    >>> decompress(blob)["fc1.weight"].shape
    (392, 784)
"""

from __future__ import annotations

from tenfold.codec.api import accumulate, compress, compress_and_decode, decompress, inspect
from tenfold.codec.bfloat16 import BFloat16Bits
from tenfold.codec.errors import CorruptPacketError, PacketMismatchError
from tenfold.codec.packet import DEFAULT_MAX_OUTPUT_BYTES, FORMAT_VERSION, PacketInfo, TensorInfo
from tenfold.codec.policy import (
    EntropyAdaptive,
    Fixed,
    GradientRMS,
    Lossless,
    Policy,
    RelativeStep,
    TargetRate,
    derive_seed,
)

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "BFloat16Bits",
    "FORMAT_VERSION",
    "CorruptPacketError",
    "EntropyAdaptive",
    "Fixed",
    "GradientRMS",
    "Lossless",
    "PacketInfo",
    "PacketMismatchError",
    "Policy",
    "RelativeStep",
    "TargetRate",
    "TensorInfo",
    "accumulate",
    "compress",
    "compress_and_decode",
    "decompress",
    "derive_seed",
    "inspect",
]
