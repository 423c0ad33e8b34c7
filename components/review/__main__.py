"""`python -m components.review render|diff|envs ...` (what `bin/mzk` runs)."""

import sys

from components.review.cli import main

sys.exit(main())
