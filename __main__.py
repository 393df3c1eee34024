"""``python -m rayps``: the same command line as ``psctl``."""

import sys

from .launcher.cli import main

sys.exit(main())
