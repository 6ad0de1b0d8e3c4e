"""The one exception family: every error tenfold raises on purpose derives from
:class:`TenfoldError`, so ``except tenfold.TenfoldError`` catches them all.

Each subclass keeps the built-in parent users already catch (``ValueError`` for bad
input and bad packets, ``RuntimeError`` for failures of a run), so existing handlers keep
working. This module imports nothing: every layer (the codec included) may use it.
"""

from __future__ import annotations

__all__ = ["ConfigError", "InputTypeError", "TenfoldError", "TenfoldWarning"]


class TenfoldError(Exception):
    """Base class of every exception tenfold raises on purpose.

    Example:
        >>> import tenfold
        >>> try:
        ...     tenfold.decompress(b"not a packet")
        ... except tenfold.TenfoldError as exc:
        ...     print(type(exc).__name__)
        CorruptPacketError
    """


class ConfigError(TenfoldError, ValueError):
    """An argument, option or configuration value is invalid; the message names it and
    says what is accepted.

    Example:
        >>> import tenfold
        >>> try:
        ...     tenfold.TargetRate(bits_per_param=-1)
        ... except tenfold.ConfigError as exc:
        ...     print(isinstance(exc, ValueError))
        True
    """


class InputTypeError(TenfoldError, TypeError):
    """An argument has the wrong type (a non-mapping where tensors are expected, an
    integer dtype where floats are); the message names it."""


class TenfoldWarning(TenfoldError, UserWarning):
    """Base class of tenfold's warnings: a setting that runs but is likely wrong (the
    message says why and what to use instead). A ``TenfoldError`` too, so that a run with
    warnings turned into errors (``-W error``) is caught by ``except tenfold.TenfoldError``.
    """
