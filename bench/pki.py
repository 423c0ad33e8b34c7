"""Time the PKI for 3 control-plane hosts + N nodes, ECDSA and RSA, cold and re-run.

    .venv/bin/python bench/pki.py          # quick (well under a minute): 500 nodes
    .venv/bin/python bench/pki.py --full   # 500 and 5,000 nodes, ECDSA and RSA

Prints one line per measurement: key type, node count, cold seconds, re-run seconds,
certificates per second. Scaling is shown by running several node counts.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootstrap import inventory as inv_mod  # noqa: E402
from bootstrap.pki import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "inventory.yaml"


def inventory_with(nodes: int, key_type: str) -> inv_mod.Inventory:
    data = yaml.safe_load(EXAMPLE.read_text())
    cps = [h for h in data["hosts"] if "control-plane" in h["roles"]]
    template = next(h for h in data["hosts"] if h["roles"] == ["node"])
    zones = data["zones"]
    hosts = list(cps)
    for i in range(nodes):
        zone = zones[i % 3]
        base = int(zone["subnets"][0].split(".")[2])  # a /20: 16 third octets
        h = copy.deepcopy(template)
        h.update(name=f"node-{i}", zone=zone["name"],
                 address=f"10.0.{base + 1 + (i // 3) // 250}.{(i // 3) % 250 + 1}")
        hosts.append(h)
    data["hosts"] = hosts
    data["pki"]["key_type"] = key_type
    return inv_mod.parse(data, source="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="the full run: --nodes 500,5000 --key-types ecdsa,rsa")
    parser.add_argument("--nodes", default="500", help="node counts, comma-separated")
    parser.add_argument("--key-types", default="ecdsa,rsa", help="key types to time")
    parser.add_argument("--workers", type=int, default=None,
                        help="PKI worker processes (default: one per core)")
    parser.add_argument("--dir", default=str(ROOT),
                        help="where to write a temporary PKI directory (default: the "
                             "repository, as `apply` writes pki/ beside the inventory; "
                             "/dev/shm leaves the disk out; on this kind of VM /tmp costs "
                             "8x per directory made)")
    args = parser.parse_args()
    if args.full:
        args.nodes, args.key_types = "500,5000", "ecdsa,rsa"
    print(f"writing under {args.dir or tempfile.gettempdir()}, "
          f"workers={args.workers or 'one per core'}")
    print(f"{'key':6} {'nodes':>6} {'certs':>6} {'cold s':>8} {'rerun s':>8} {'certs/s':>8}")
    for key_type in args.key_types.split(","):
        for nodes in (int(n) for n in args.nodes.split(",")):
            inventory = inventory_with(nodes, key_type)
            with tempfile.TemporaryDirectory(dir=args.dir, prefix=".bench-pki-") as out:
                started = time.perf_counter()
                result = generate(inventory, out, workers=args.workers)
                cold = time.perf_counter() - started
                issued = sum(len(h.issued) for h in result.hosts.values()) + 1
                started = time.perf_counter()
                again = generate(inventory, out, workers=args.workers)
                rerun = time.perf_counter() - started
                assert not again.changed, "a re-run changed files"
            print(f"{key_type:6} {nodes:6d} {issued:6d} {cold:8.2f} {rerun:8.2f} "
                  f"{issued / cold:8.0f}", flush=True)


if __name__ == "__main__":
    main()
