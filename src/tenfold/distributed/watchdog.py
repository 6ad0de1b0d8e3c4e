"""A warning when a rank has waited long for its peers, before the group's timeout ends it.

A peer that died closes its connections and every rank fails at once; one that is stuck,
or called ``average()`` / ``step()`` fewer times than the others, leaves them waiting
until the process group's timeout (torch's default: 30 minutes for gloo). Every blocking
wait of a synchronisation registers here; one daemon thread warns, once per wait, when a
wait passes :data:`WARN_AFTER_S`, saying what it waits for and what to check.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import warnings
from collections.abc import Iterator

from tenfold.errors import TenfoldWarning

__all__ = ["WARN_AFTER_S", "WaitingForPeersWarning", "waiting_for_peers"]

#: seconds a rank waits for its peers before it says so (a sync's waits are milliseconds
#: to seconds on the links tenfold is for; the compile of a first sync, tens of seconds)
WARN_AFTER_S = 60.0


class WaitingForPeersWarning(TenfoldWarning):
    """A rank has waited :data:`WARN_AFTER_S` seconds or more for the other ranks."""


class _Watchdog:
    """The open waits of this process, and the thread that watches them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waits: dict[int, tuple[float, str, bool]] = {}  # token -> start, what, warned
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = -1

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        token = next(self._tokens)
        with self._lock:
            self._waits[token] = (time.monotonic(), what, False)
            # started lazily, and again in a forked child (which has no threads)
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._watch, name="tenfold-watchdog", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._waits.pop(token, None)

    def _watch(self) -> None:
        while True:
            # read each time: tests (and users) may lower it
            after = WARN_AFTER_S
            time.sleep(min(5.0, max(0.05, after / 4)))
            now = time.monotonic()
            due = []
            with self._lock:
                for token, (start, what, warned) in self._waits.items():
                    if not warned and now - start >= after:
                        self._waits[token] = (start, what, True)
                        due.append((now - start, what))
            for seconds, what in due:
                warnings.warn(
                    f"tenfold: this rank has waited {seconds:.0f} s for the other ranks "
                    f"({what}). If a rank died, is stuck, or called average()/step() fewer "
                    "times than this one, every rank stops with a CommunicationError when "
                    "the process group's timeout expires (torch's default: 30 minutes for "
                    "gloo; init_process_group(timeout=...) sets it)",
                    WaitingForPeersWarning,
                    stacklevel=1,
                )


_WATCHDOG = _Watchdog()


def waiting_for_peers(what: str) -> contextlib.AbstractContextManager[None]:
    """A context around a wait on other ranks (``what``: e.g. "exchanging packet sizes"):
    a :class:`WaitingForPeersWarning` is issued if it lasts :data:`WARN_AFTER_S` or more.
    Costs a dict insert and removal under a lock."""
    return _WATCHDOG.waiting(what)
