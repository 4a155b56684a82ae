"""``python -m writebehind.cli``: the same as the ``writebehind`` command."""

import sys

from .main import main

sys.exit(main())
