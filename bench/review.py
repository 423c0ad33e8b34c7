"""Bench the review commands as a user runs them: `bin/mzk render prod` and
`bin/mzk diff prod --base HEAD~1`, each a fresh process (imports included).

Usage: .venv/bin/python bench/review.py [--runs N]

Target: each at most 5 s on the build machine. The diff renders the base (in a child process,
from `git archive`) while it renders the working tree, so it costs about one render plus the
unpacking, not two renders.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 5.0
COMMANDS = {
    "render prod": ["render", "prod"],
    "diff prod --base HEAD~1": ["diff", "prod", "--base", "HEAD~1"],
}


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "components.review", *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    ok = True
    for label, args in COMMANDS.items():
        times = [timed(args) for _ in range(runs)]
        worst = max(times)
        ok = ok and worst <= TARGET_SECONDS
        print(f"bin/mzk {label:26} best {min(times):5.2f} s  worst {worst:5.2f} s  "
              f"({runs} runs, target {TARGET_SECONDS:g} s)")
    print("OK" if ok else "FAIL: over target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
