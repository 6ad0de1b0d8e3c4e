"""The codec's exceptions.

Two kinds of failure reach a receiver, and they need different handling:

* :class:`CorruptPacketError` - the bytes are not a valid tenfold packet (truncated,
  bit-flipped, forged sizes, ...). It is the ONLY exception ``decompress``, ``inspect`` and
  ``accumulate`` raise for bad bytes; its message says what is wrong and where.
* :class:`PacketMismatchError` - a perfectly valid packet that does not describe the tensors
  the receiver expects (another model, another dtype); raised by ``accumulate``. The message
  names the first offending tensor.

Both subclass :class:`tenfold.TenfoldError` and :class:`ValueError`, so ``except ValueError`` catches every data problem.
"""

from __future__ import annotations

from tenfold.errors import TenfoldError

__all__ = ["CorruptPacketError", "PacketMismatchError"]


class CorruptPacketError(TenfoldError, ValueError):
    """The bytes are not a valid tenfold packet; the message says what is wrong.

    Example:
        >>> import tenfold
        >>> try:
        ...     tenfold.decompress(b"not a packet")
        ... except tenfold.CorruptPacketError as exc:
        ...     print("rejected:", exc)  # doctest: +ELLIPSIS
        rejected: ...
    """


class PacketMismatchError(TenfoldError, ValueError):
    """A valid packet whose tensors (names, order, shapes, dtypes) differ from the receiver's.

    The message names the first tensor that does not match and says how.
    """
