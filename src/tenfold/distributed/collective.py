"""Which protocol a synchronisation runs: ``"all-gather"``, ``"reduce-scatter"``, or
``"auto"`` (reduce-scatter from 3 ranks and 8M values up; measurements in
docs/PROTOCOL.md)."""

from __future__ import annotations

from tenfold.errors import ConfigError

__all__ = [
    "AUTO_MIN_RANKS",
    "AUTO_MIN_VALUES",
    "COLLECTIVES",
    "DEFAULT_COLLECTIVE",
    "PROTOCOLS",
    "check_collective",
    "resolve_collective",
]

#: The protocols of one synchronisation (:mod:`tenfold.distributed.protocol`).
PROTOCOLS = ("all-gather", "reduce-scatter")
#: What ``collective=`` accepts: a protocol, or ``"auto"`` (:func:`resolve_collective`).
COLLECTIVES = ("auto", *PROTOCOLS)

#: ``"auto"`` picks reduce-scatter from this many ranks and this many values up
#: (docs/PROTOCOL.md, "Choosing the collective").
AUTO_MIN_RANKS = 3
AUTO_MIN_VALUES = 8_000_000

#: The default: ``"auto"``.
DEFAULT_COLLECTIVE = "auto"


def check_collective(collective: str) -> str:
    """``collective`` itself, or :class:`~tenfold.ConfigError` if it is not one of
    :data:`COLLECTIVES`."""
    if collective not in COLLECTIVES:
        raise ConfigError(f"collective must be one of {COLLECTIVES}, got {collective!r}")
    return collective


def resolve_collective(collective: str, num_values: int, world_size: int) -> str:
    """The protocol ``collective`` means for ``num_values`` values among ``world_size``
    ranks: itself, or for ``"auto"`` reduce-scatter when ``world_size >= AUTO_MIN_RANKS``
    and ``num_values >= AUTO_MIN_VALUES``, else all-gather. Every rank computes the same
    answer (same model, same group), so the ranks always agree on the protocol.

    Example:
        >>> resolve_collective("auto", 25_000_000, 4), resolve_collective("auto", 318_010, 5)
        ('reduce-scatter', 'all-gather')
    """
    check_collective(collective)
    if collective != "auto":
        return collective
    big = world_size >= AUTO_MIN_RANKS and num_values >= AUTO_MIN_VALUES
    return "reduce-scatter" if big else "all-gather"
