"""Bench the Pulumi program under mocks: evaluation time per stack, and resource counts.

Usage: .venv/bin/python bench/program.py

Times each stack (dev, prod, test) from its real stack file, then evaluates prod with node
pools for 30 and for 3,000 nodes: the resource count must not grow with the node count
(nodes come from auto scaling groups, not from declared instances). Target: prod < 5 s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.program.mocks import evaluate  # noqa: E402
from tests.program.stackconfig import STACKS, stack_config  # noqa: E402

TARGET_SECONDS = 5.0


def timed(stack: str, config: dict[str, str]) -> tuple[float, int, int]:
    """Seconds to evaluate; declared cloud resources; components."""
    start = time.perf_counter()
    ev = evaluate(stack, config)
    seconds = time.perf_counter() - start
    components = sum(r.typ.startswith("multizone:components:") for r in ev.resources)
    return seconds, len(ev.resources) - components, components


def main() -> int:
    import argparse
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"No options: evaluates dev, prod and test, then prod with 30 and 3,000 "
               f"nodes; target prod < {TARGET_SECONDS:g} s.").parse_args()
    cold, _, _ = timed("prod", stack_config("prod"))
    print(f"prod  cold   {cold:6.2f} s  (first evaluation in a process: loads pulumi_aws "
          "modules, as `pulumi preview` would)")
    results = {}
    for stack in STACKS:
        seconds, count, components = timed(stack, stack_config(stack))
        results[stack] = max(seconds, cold if stack == "prod" else 0)
        print(f"{stack:5} warm   {seconds:6.2f} s  {count:4} resources + {components} components")
    counts = {}
    for nodes, per_zone, pods in ((30, 10, 110), (3000, 1000, 40)):
        _, counts[nodes], _ = timed("prod", stack_config(
            "prod", nodePool={"instanceType": "m6i.2xlarge", "min": per_zone,
                              "desired": per_zone, "max": per_zone, "podsPerNode": pods}))
        print(f"prod with {nodes:5} nodes: {counts[nodes]} resources")
    ok = results["prod"] < TARGET_SECONDS and counts[30] == counts[3000]
    print("OK" if ok else "FAIL: prod too slow or resource count grows with nodes")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
