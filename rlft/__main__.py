"""``python -m rlft``: the same as the ``rlft`` command."""

import sys

from rlft.cli import main

sys.exit(main())
