"""``python -m chunkq``: the same as the ``chunkq`` console script."""

import sys

from chunkq.cli import main

sys.exit(main())
