"""``python -m lookalike.cli``."""

import sys

from lookalike.cli import main

sys.exit(main())
