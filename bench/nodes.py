"""Time nodes joining on the lab: `apply` from its start until every inventory node is Ready
and admitted (3 control-plane hosts, 12 nodes, 4 per zone, the control plane made in the
same run), a no-op re-apply with those kubelets running, and one auto-scaled node from its
launch (`bootstrap lab launch`: namespace, user data) until it is Ready and admitted by the
approver. Needs root and the Kubernetes binaries (MZK_K8S_BIN_DIR, as `bin/mzk` sets it).

    .venv/bin/python bench/nodes.py [--workers 12] [--launches 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootstrap.apply_command import execute, local_binaries  # noqa: E402
from bootstrap.inventory import load  # noqa: E402
from bootstrap.k8s_bin import resolve_dir  # noqa: E402
from bootstrap.lab import build, launch  # noqa: E402
from bootstrap.node.kubelet_config import CHECKS_TAINT  # noqa: E402


def nodes(lab_dir: Path) -> dict[str, dict]:
    pid = build.State.load(lab_dir).data["pids"]["cp-a"]
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", str(Path(str(resolve_dir(None)))
                          / "kubectl"), "--kubeconfig=/etc/kubernetes/admin.conf", "get",
                          "nodes", "-o", "json"], capture_output=True, text=True, check=True)
    return {n["metadata"]["name"]: n for n in json.loads(out.stdout)["items"]}


def admitted(node: dict) -> bool:
    ready = any(c["type"] == "Ready" and c["status"] == "True"
                for c in node["status"].get("conditions", []))
    return ready and not any(t["key"] == CHECKS_TAINT for t in node["spec"].get("taints") or [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--launches", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mzk-bench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        try:
            build.up(lab_dir, workers=args.workers, say=lambda _m: None)
            inventory = load(lab_dir / "inventory.yaml")
            binaries = local_binaries(inventory, None)
            started = time.perf_counter()
            execute(inventory, lab_dir / "pki", dry_run=False, binaries=binaries)
            cold = time.perf_counter() - started
            found = nodes(lab_dir)
            ready = sum(admitted(found.get(h.name, {"status": {}, "spec": {}}))
                        for h in inventory.nodes)
            print(f"apply, fresh lab, 3 control-plane + {args.workers} nodes: {cold:.1f} s "
                  f"to {ready}/{args.workers} nodes Ready and admitted")
            noop = []
            for _ in range(3):
                started = time.perf_counter()
                report = execute(inventory, lab_dir / "pki", dry_run=False, binaries=binaries)
                noop.append(time.perf_counter() - started)
                assert not report.changed, report.lines()
            print(f"no-op apply with {args.workers} kubelets running: median "
                  f"{statistics.median(noop):.2f} s")
            zones = [z.name for z in inventory.zones]
            for i in range(args.launches):
                started = time.perf_counter()
                node = launch.launch(lab_dir, zones[i % len(zones)])
                user_data = time.perf_counter() - started
                while not admitted(nodes(lab_dir).get(node.name, {"status": {}, "spec": {}})):
                    if time.perf_counter() - started > 300:
                        for cp in ("cp-a", "cp-b", "cp-c"):
                            log = (lab_dir / "hosts" / cp / "fs" / "var/lib/mzk/log"
                                   / "mzk-csr-approver.log")
                            print(cp, log.read_text()[-600:] if log.exists() else "no log")
                        print(json.dumps(nodes(lab_dir).get(node.name), indent=1)[:3000])
                        raise SystemExit(f"{node.name} not admitted within 300 s")
                    time.sleep(0.2)
                print(f"auto-scaled {node.name}: launch to Ready and admitted "
                      f"{time.perf_counter() - started:.1f} s (user data {user_data:.1f} s)")
        finally:
            build.down(lab_dir, say=lambda _m: None)


if __name__ == "__main__":
    main()
