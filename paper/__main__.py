"""``python -m paper ARGS`` (what ``make reproduce ARGS=...`` runs) from the repository root."""

import sys

from paper.reproduce import main

sys.exit(main())
