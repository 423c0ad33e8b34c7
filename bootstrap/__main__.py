"""`python -m bootstrap ...`: see bootstrap.cli."""

import sys

from bootstrap.cli import main

sys.exit(main())
