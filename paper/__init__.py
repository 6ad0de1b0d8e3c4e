"""The paper's reproduction: profiles of training runs, a resumable sweep, analysis, figures,
REPORT.md. Research code over the library: it imports ``tenfold``, ``tenfold`` never imports it,
and it is not installed (``pip install .`` ships ``src/tenfold`` only).

* :mod:`paper.profiles` - which runs make which figure (``quick``, ``full``, ``long``, ``beyond``);
* :mod:`paper.sweep` - train them, one JSON file per run, resumable;
* :mod:`paper.analysis` - convergence, bits, statistics over seeds;
* :mod:`paper.figures` - paper Figs. 1-5 and the ablation, as PNG;
* :mod:`paper.report` - REPORT.md, the paper's numbers beside ours;
* :mod:`paper.peers`, :mod:`paper.peer_averager` - the other compressors (fp16, bf16, int8,
  top-k, PowerSGD) and the averager that runs them;
* :mod:`paper.compressor_comparison` - tenfold against those compressors (``--profile beyond``);
* :mod:`paper.reproduce` - the command line: ``make reproduce ARGS="--profile quick --out DIR"``
  or ``python -m paper --profile quick --out DIR`` from the repository root.

Example:
    >>> from paper.profiles import get_profile
    >>> from paper.report import write_report
    >>> from paper.sweep import run_sweep
    >>> profile = get_profile("quick")
    >>> run_sweep(profile, "runs/reproduce-quick", jobs=2)  # doctest: +SKIP
    >>> write_report("runs/reproduce-quick", profile)  # doctest: +SKIP
"""
