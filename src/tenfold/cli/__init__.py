"""The ``tenfold`` command line: ``tenfold train | inspect | bench``.

The paper's reproduction (``make reproduce``) and the benchmarks (``make bench``) are not
part of the installed package: they run from a clone (``paper/``, ``benchmarks/``). The
codec's speed benchmark is the exception: ``tenfold bench`` (:mod:`tenfold.bench`) lets a
user time the codec on their own machine; ``benchmarks/codec_speed.py`` runs the same code.

Each subcommand lives in its own module of this package and exposes two functions:

``add_parser(subparsers) -> argparse.ArgumentParser``
    registers the subcommand, its help text and options;
``run(args: argparse.Namespace) -> int``
    does the work and returns the process exit code.

``main(argv)`` is importable and testable in-process (``main(["inspect", "p.tf"])``).

Exit codes (documented in README and docs/RELIABILITY.md):

* 0 - success
* 1 - the job failed (a peer died, training diverged)
* 2 - bad usage or bad input (unknown option, missing dataset, corrupt packet, bad config)
* 130 - interrupted by the user (Ctrl-C)
* 141 - the reader of stdout went away (``tenfold inspect p.tf --json | head``): exits
  quietly, as a tool killed by SIGPIPE does
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

#: subcommand name -> module (imported lazily so ``tenfold inspect`` never pays for torch).
SUBCOMMANDS: dict[str, str] = {
    "train": "tenfold.cli.train",
    "inspect": "tenfold.cli.inspect_cmd",
    "bench": "tenfold.cli.bench_cmd",
}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE: what a shell reports for a C tool killed by a closed pipe (``cat | head``).
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    from tenfold import __version__

    parser = argparse.ArgumentParser(
        prog="tenfold",
        description=(
            "Compress what data-parallel workers exchange: each worker's delta from the shared "
            "model, with error feedback, rate-controlled and coded by rANS at 1 bit/param "
            "(~32x less than float32) by default; the paper's (Øland & Raj) entropy-adaptive "
            "weights coding with canonical Huffman is --scheme paper."
        ),
        epilog="Run 'tenfold <command> --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tenfold {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a subcommand not built yet
            if exc.name != module_name:
                raise
            continue
        p = module.add_parser(sub)
        # the subcommand's own parser reports its unknown options (see main)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """:func:`warnings.formatwarning` for the command line: tenfold's own warnings
    (:class:`tenfold.TenfoldWarning`) as one ``tenfold: warning: ...`` line, without the
    library's file and source line, which say nothing to a user of the command; any other
    warning as Python formats it."""
    from tenfold.errors import TenfoldWarning

    if issubclass(category, TenfoldWarning):
        return f"tenfold: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    previous = warnings.formatwarning
    warnings.formatwarning = format_warning
    try:
        code = _main(argv)
        # flush here, where a reader that has gone (``| head``) can be handled, rather
        # than at interpreter exit, which would print "Exception ignored ... BrokenPipeError"
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        warnings.formatwarning = previous


def _silence_stdout() -> None:
    """Point stdout at devnull after a broken pipe, so that nothing written later (and not
    the interpreter's final flush) raises again (Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):  # not a file descriptor (an in-process caller)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open as the new stdout
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    # parse_args would report a subcommand's unknown option with the top-level usage
    # ("usage: tenfold [-h] [--version] <command> ..."): let the subcommand's parser do it.
    args, unknown = parser.parse_known_args(list(argv) if argv is not None else None)
    if unknown:
        owner = getattr(args, "_parser", None) or parser
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")  # exits 2
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args._run(args))
    except KeyboardInterrupt:  # a subcommand that has more to say catches it itself
        print("tenfold: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
