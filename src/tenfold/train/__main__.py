"""``python -m tenfold.train``: the ``tenfold train`` command, also as torchrun's module.

    torchrun --standalone --nproc_per_node=4 -m tenfold.train --epochs 5 --out runs/tr

Under torchrun each process is one rank (rank and world size from torchrun's environment,
``init_method="env://"``); started directly it spawns the ranks itself like
``tenfold train``. Options: ``python -m tenfold.train --help``.
"""

from __future__ import annotations

import argparse
import sys

from tenfold.cli.train import DESCRIPTION, EPILOG, add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m tenfold.train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        print("tenfold: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
