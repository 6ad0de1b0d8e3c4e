"""Reproduce the paper: profiles of training runs, a resumable sweep, analysis, figures, report.

* :mod:`~tenfold.experiments.profiles` - the ``quick`` and ``full`` profiles (which runs);
* :mod:`~tenfold.experiments.sweep` - train them, one JSON file per run, resumable;
* :mod:`~tenfold.experiments.analysis` - convergence, bits, statistics over seeds;
* :mod:`~tenfold.experiments.figures` - paper Figs. 1-5 and the ablation, as PNG;
* :mod:`~tenfold.experiments.report` - REPORT.md, the paper's numbers beside ours.

``tenfold reproduce`` (:mod:`tenfold.cli.reproduce`) runs all of it.

Example:
    >>> from tenfold.experiments import get_profile, run_sweep, write_report
    >>> profile = get_profile("quick")
    >>> run_sweep(profile, "runs/reproduce-quick", jobs=2)  # doctest: +SKIP
    >>> write_report("runs/reproduce-quick", profile)  # doctest: +SKIP
"""

from __future__ import annotations

from tenfold.experiments.profiles import PROFILES, Profile, RunSpec, Setting, get_profile
from tenfold.experiments.report import write_report
from tenfold.experiments.sweep import SweepResult, load_runs, run_sweep

__all__ = [
    "PROFILES",
    "Profile",
    "RunSpec",
    "Setting",
    "SweepResult",
    "get_profile",
    "load_runs",
    "run_sweep",
    "write_report",
]
