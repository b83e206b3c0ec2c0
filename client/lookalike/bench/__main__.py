"""``python -m lookalike.bench``."""

import sys

from lookalike.bench.runner import main

sys.exit(main())
