"""The kubelet's configuration file and command line (pure: text and words, no host).

Hardened as seed 001 asks, the same on every node:
- no anonymous requests; webhook authentication (bearer tokens checked with the API
  server) and webhook authorization (SubjectAccessReview), client certificates of the
  cluster CA (`--client-ca-file`, from the PKI table like every other file flag);
- a serving certificate the API server verifies: from our PKI for inventory nodes
  (`--tls-cert-file`), requested from the cluster's signer for joined nodes
  (`serverTLSBootstrap`, approved by the identity-checking approver);
- read-only port off; `maxPods` 110 (seed 004, part 1); `protectKernelDefaults` (the
  bootstrap sets the four kernel values the kubelet checks, bootstrap.node.checks);
- TLS 1.2 at least, streaming connections closed after 5 idle minutes;
- registered with the conformance taint (`CHECKS_TAINT`), lifted once node checks pass.

Lab hosts share one kernel and its cgroup v1 hierarchies: they run with cgroupfs (no systemd),
their own `cgroupRoot`, and `failCgroupV1: false`. Real hosts: the systemd driver, cgroup v2.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from bootstrap.pki.table import flag_words
from bootstrap.services import Service

CONFIG_PATH = "/var/lib/kubelet/config.yaml"
KUBECONFIG = "/etc/kubernetes/kubelet.conf"
BOOTSTRAP_KUBECONFIG = "/etc/kubernetes/bootstrap-kubelet.conf"
CA_FILE = "/etc/kubernetes/pki/ca.crt"
RUNTIME_SOCKET = "/run/containerd/containerd.sock"
HEALTHZ_PORT = 10248  # loopback only
CHECKS_TAINT = "node.mzk.io/checks-pending"
MAX_PODS = 110
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
# The kernel values a kubelet with protectKernelDefaults refuses to start without.
KERNEL_DEFAULTS = {"vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10",
                   "kernel/panic_on_oops": "1"}
SYSCTL_FILE = "/etc/sysctl.d/90-mzk-kubelet.conf"


@dataclass(frozen=True)
class KubeletSettings:
    """What differs between nodes and between lab and real hosts."""

    lab: bool
    cluster_dns: str
    cluster_domain: str
    cgroup_root: str | None = None  # lab: the host's own subtree
    tls_bootstrap: bool = False  # joined by a bootstrap token (no serving cert from us)


def config_yaml(s: KubeletSettings) -> bytes:
    config: dict[str, object] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False},
                           "webhook": {"enabled": True, "cacheTTL": "2m0s"},
                           "x509": {"clientCAFile": CA_FILE}},
        "authorization": {"mode": "Webhook"},
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": HEALTHZ_PORT,
        "maxPods": MAX_PODS,
        "protectKernelDefaults": True,
        "tlsMinVersion": "VersionTLS12",
        "streamingConnectionIdleTimeout": "5m0s",
        "containerRuntimeEndpoint": f"unix://{RUNTIME_SOCKET}",
        "cgroupDriver": "cgroupfs" if s.lab else "systemd",
        "clusterDomain": s.cluster_domain,
        "clusterDNS": [s.cluster_dns],
        "registerWithTaints": [{"key": CHECKS_TAINT, "effect": "NoSchedule"}],
        "rotateCertificates": s.tls_bootstrap,
        "serverTLSBootstrap": s.tls_bootstrap,
    }
    if s.lab:
        config["failCgroupV1"] = False  # this machine has cgroup v1; real hosts have v2
        if s.cgroup_root:
            config["cgroupRoot"] = s.cgroup_root
    return yaml.safe_dump(config, sort_keys=True).encode()


def region_of(zone: str) -> str:
    """An AWS zone's region (us-east-1a -> us-east-1); the lab's zones lab-a.. -> lab."""
    return zone[:-1].rstrip("-") if len(zone) > 1 else zone


def node_labels(zone: str) -> str:
    return f"{ZONE_LABEL}={zone},{REGION_LABEL}={region_of(zone)}"


def command(binary: str, name: str, address: str, zone: str, *,
            tls_bootstrap: bool = False) -> list[str]:
    """The kubelet's command line; file flags of inventory nodes come from the PKI table."""
    files = ([f"--client-ca-file={CA_FILE}", f"--bootstrap-kubeconfig={BOOTSTRAP_KUBECONFIG}"]
             if tls_bootstrap else flag_words("kubelet"))
    return [binary, f"--config={CONFIG_PATH}", f"--kubeconfig={KUBECONFIG}", *files,
            f"--hostname-override={name}", f"--node-ip={address}",
            f"--node-labels={node_labels(zone)}"]


def service(command_line: list[str]) -> Service:
    """The kubelet as a service of every node (inventory or joined), after containerd."""
    return Service(name="kubelet", command_line=command_line, after=("containerd",),
                   description="kubelet: runs this node's pods")


def sysctl_conf() -> bytes:
    return ("# Kernel values the kubelet checks (protectKernelDefaults); multizone-k8s.\n"
            + "".join(f"{k.replace('/', '.')} = {v}\n" for k, v in KERNEL_DEFAULTS.items())
            ).encode()
