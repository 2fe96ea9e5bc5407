"""``python -m rlft.cli``: the same as the ``rlft`` command."""

import sys

from rlft.cli import main

sys.exit(main())
