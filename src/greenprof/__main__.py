"""``python -m greenprof``: the greenprof command."""

import sys

from ._cli import main

sys.exit(main())
