import sys

from rayps.launcher.cli import main

sys.exit(main())
