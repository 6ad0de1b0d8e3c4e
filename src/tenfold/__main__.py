"""``python -m tenfold`` is the ``tenfold`` command."""

import sys

from tenfold.cli import main

sys.exit(main())
