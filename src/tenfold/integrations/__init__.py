"""tenfold inside third-party training frameworks, one module per framework.

* :mod:`tenfold.integrations.lightning` - :class:`~tenfold.integrations.lightning.CompressedDDPHook`,
  a PyTorch Lightning callback that registers tenfold's DDP communication hook on any device.

Nothing here is imported by ``import tenfold``: each module imports its framework (an
optional dependency, ``pip install 'tenfold[examples]'``) only when it is imported itself.
"""

from __future__ import annotations

from tenfold.errors import TenfoldError

__all__ = ["MissingDependencyError"]


class MissingDependencyError(TenfoldError, ImportError):
    """An integration's framework is not installed; the message says what to install."""
