"""``python -m gslb``: the same as the ``gslb`` command."""

import sys

from gslb.cli import main

sys.exit(main())
