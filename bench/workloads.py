"""Time the workloads on a fresh lab: `apply` from its start (3 control-plane hosts, 12
nodes, the control plane made in the same run) until a pod in every zone resolves
`kubernetes.default.svc` through CoreDNS and connects to an API server through the
`kubernetes` Service's virtual IP (kube-proxy); then a no-op `apply` with all of it running.
Needs root and the Kubernetes binaries (MZK_K8S_BIN_DIR, as `bin/mzk` sets it).

    .venv/bin/python bench/workloads.py [--workers 12]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootstrap.addons.lab_images import reference  # noqa: E402
from bootstrap.apply_command import execute, local_binaries  # noqa: E402
from bootstrap.inventory import load  # noqa: E402
from bootstrap.k8s_bin import resolve_dir  # noqa: E402
from bootstrap.lab import build  # noqa: E402


def kubectl(lab_dir: Path, *args: str, stdin: str | None = None) -> str:
    pid = build.State.load(lab_dir).data["pids"]["cp-a"]
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "-m",
                           str(Path(str(resolve_dir(None))) / "kubectl"),
                           "--kubeconfig=/etc/kubernetes/admin.conf", *args], input=stdin,
                          capture_output=True, text=True, check=True).stdout


def probe(zone: str, domain: str) -> dict:
    # busybox's TLS cannot talk to the API server, so "reaches" is a TCP connection through
    # the Service's virtual IP to an API server's port (the lab test does the TLS part with
    # kubectl and the pod's token).
    script = (f"nslookup kubernetes.default.svc.{domain} >/dev/null && "
              f"echo | timeout 5 nc kubernetes.default.svc.{domain} 443")
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"probe-{zone}", "namespace": "default"},
            "spec": {"restartPolicy": "OnFailure",
                     "nodeSelector": {"topology.kubernetes.io/zone": zone},
                     "containers": [{"name": "probe", "image": reference("busybox"),
                                     "command": ["/bin/busybox", "sh", "-c", script]}]}}


def answered(lab_dir: Path, zones: list[str]) -> bool:
    pods = json.loads(kubectl(lab_dir, "get", "pods", "-o", "json"))["items"]
    done = {p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Succeeded"}
    return all(f"probe-{z}" in done for z in zones)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mzk-bench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        try:
            build.up(lab_dir, workers=args.workers, say=lambda _m: None)
            inventory = load(lab_dir / "inventory.yaml")
            binaries = local_binaries(inventory, None)
            zones = [z.name for z in inventory.zones]
            started = time.perf_counter()
            execute(inventory, lab_dir / "pki", dry_run=False, binaries=binaries)
            applied = time.perf_counter() - started
            body = json.dumps({"apiVersion": "v1", "kind": "List", "items": [
                probe(z, inventory.cluster.dns_domain) for z in zones]})
            kubectl(lab_dir, "apply", "-f", "-", stdin=body)
            while not answered(lab_dir, zones):
                if time.perf_counter() - started > 600:
                    raise SystemExit("no answer from every zone within 600 s")
                time.sleep(0.2)
            served = time.perf_counter() - started
            noop = []
            for _ in range(3):
                t = time.perf_counter()
                report = execute(inventory, lab_dir / "pki", dry_run=False, binaries=binaries)
                noop.append(time.perf_counter() - t)
                assert not report.changed, report.lines()
            print(f"hosts: 3 control-plane + {args.workers} nodes")
            print(f"apply (cold): {applied:.1f} s")
            print(f"apply start -> a pod in every zone resolves and reaches the API: "
                  f"{served:.1f} s")
            print(f"no-op apply: min {min(noop):.2f} s, max {max(noop):.2f} s")
        finally:
            build.down(lab_dir, say=lambda _m: None)


if __name__ == "__main__":
    main()
