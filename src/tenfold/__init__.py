"""tenfold: cut the communication of distributed training by an order of magnitude.

Per-layer entropy-adaptive quantization and canonical Huffman coding of model weights
(Øland & Raj, "Reducing communication overhead in distributed learning by an order of
magnitude (almost)"), with a self-contained wire format and a torch.distributed averager.

Example:
    >>> import numpy as np, tenfold
    >>> w = np.random.default_rng(0).laplace(0, 0.05, (392, 784)).astype(np.float32)
    >>> blob = tenfold.compress({"fc1.weight": w}, policy=tenfold.EntropyAdaptive())
    >>> out = tenfold.decompress(blob)["fc1.weight"]
    >>> out.shape, out.dtype
    ((392, 784), dtype('float32'))
"""

from tenfold.codec import (
    DEFAULT_MAX_OUTPUT_BYTES,
    BFloat16Bits,
    CorruptPacketError,
    EntropyAdaptive,
    Fixed,
    GradientRMS,
    Lossless,
    PacketInfo,
    PacketMismatchError,
    Policy,
    RelativeStep,
    TargetRate,
    TensorInfo,
    accumulate,
    compress,
    decompress,
    inspect,
)
from tenfold.errors import ConfigError, InputTypeError, TenfoldError, TenfoldWarning

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "BFloat16Bits",
    "ConfigError",
    "CorruptPacketError",
    "EntropyAdaptive",
    "Fixed",
    "GradientRMS",
    "InputTypeError",
    "Lossless",
    "PacketInfo",
    "PacketMismatchError",
    "Policy",
    "RelativeStep",
    "TargetRate",
    "TenfoldError",
    "TenfoldWarning",
    "TensorInfo",
    "__version__",
    "accumulate",
    "compress",
    "decompress",
    "inspect",
]
