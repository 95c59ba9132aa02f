"""``python -m htsr`` runs the command line."""

import sys

from htsr.cli.main import main

sys.exit(main())
