"""The lab tests' workload: a one-layer image of Debian's static busybox (no registry is
reachable from the lab), imported into every node's containerd, and the pod specs built
on it. Pods name the image with `imagePullPolicy: Never`, so a node without it fails
loudly instead of trying a registry.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bootstrap.node import oci_archive

from .conftest import Lab

IMAGE = "mzk.local/busybox:lab"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
ARCHIVE = "/var/lib/mzk/images/workload.tar"


def archive() -> bytes:
    blobs = oci_archive.image_blobs(
        [("bin", 0o755, None), ("bin/busybox", 0o755, BUSYBOX.read_bytes()),
         ("tmp", 0o1777, None), ("www", 0o755, None)],
        {"Entrypoint": ["/bin/busybox"], "Cmd": ["sh"], "Env": ["PATH=/bin"],
         "WorkingDir": "/"})
    return oci_archive.archive(IMAGE, blobs)


def import_on(lab: Lab, node: str) -> None:
    """Put the archive on the node and import it into its containerd (CRI namespace), from
    this machine inside the host's namespaces (launched nodes have no inventory entry)."""
    pid = json.loads((lab.dir / "lab-state.json").read_text())["pids"][node]
    done = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "-m", "sh", "-c",
         f"mkdir -p /var/lib/mzk/images && cat > {ARCHIVE}.tmp && mv {ARCHIVE}.tmp {ARCHIVE} "
         f"&& ctr --address /run/containerd/containerd.sock -n k8s.io images import {ARCHIVE}"],
        input=archive(), capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def container(name: str, script: str, **extra: object) -> dict[str, object]:
    return {"name": name, "image": IMAGE, "imagePullPolicy": "Never",
            "command": ["/bin/busybox", "sh", "-c", script], **extra}


RESTRICTED_SECURITY = {"runAsNonRoot": True, "runAsUser": 65534,
                       "allowPrivilegeEscalation": False,
                       "capabilities": {"drop": ["ALL"]},
                       "seccompProfile": {"type": "RuntimeDefault"}}

# Logs a counter every second and serves HTTP on 8080 (for port-forward).
WEB_SCRIPT = ("echo \"$NODE_NAME\" > /tmp/node; /bin/busybox httpd -f -p 8080 -h /tmp & "
              "i=0; while true; do echo \"tick $i on $NODE_NAME\"; i=$((i+1)); sleep 1; done")


def spread_deployment(name: str, namespace: str, replicas: int) -> dict[str, object]:
    """Pods spread over the zones (maxSkew 1, DoNotSchedule), each naming its node."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule",
                        # A zone whose nodes are all tainted (lost) is no domain to
                        # balance against: its pods go to the other zones.
                        "nodeTaintsPolicy": "Honor",
                        "labelSelector": {"matchLabels": labels}}],
                    "containers": [container(
                        "web", WEB_SCRIPT, securityContext=RESTRICTED_SECURITY,
                        env=[{"name": "NODE_NAME",
                              "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                        ports=[{"containerPort": 8080}])],
                    # Node loss: leave a NotReady node's pods after 5 s, not 5 minutes.
                    "tolerations": [
                        {"key": k, "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 5}
                        for k in ("node.kubernetes.io/not-ready",
                                  "node.kubernetes.io/unreachable")],
                },
            },
        },
    }
