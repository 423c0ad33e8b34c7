"""The user data of an auto-scaled node: a shell script that joins it by kubelet TLS
bootstrapping (seed 001), with nothing from the bootstrap over SSH.

It writes the same files the nodes step writes on inventory nodes (containerd's config, the
pod network template, the kernel values, the kubelet's configuration with
`serverTLSBootstrap` and `rotateCertificates`), plus a bootstrap kubeconfig holding the
pool's join token, then starts containerd and the kubelet. The kubelet asks for its client
certificate with the token and for its serving certificate as the node; the control plane's
approver (bootstrap.node.csr_approver) approves either only once the name and addresses
are a running instance of this cluster's pool.

On AWS the node's name is its private DNS name and its address its private IPv4, both read
from the instance metadata service (IMDSv2) when the script runs; packages and the pinned
kubelet release are installed first. In the lab the launcher (bootstrap.lab.launch) gives
name, address and the kubelet binary, as the lab's "image".
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

from bootstrap.k8s_releases import release_for
from bootstrap.node import cni, containerd_config, pause_image
from bootstrap.node import kubelet_config as kc
from bootstrap.services import SUPERVISOR_PATH, Service, render_unit, unit_path
from bootstrap.steps.binaries import INSTALL_DIR, kubernetes_install_script

NAME_MARK, ADDRESS_MARK = "@NODE_NAME@", "@NODE_ADDRESS@"
PACKAGES = ("containerd", "runc", "containernetworking-plugins", "curl")
IMDS = "http://169.254.169.254/latest"


@dataclass(frozen=True)
class JoinSpec:
    """Everything a node of one pool needs to join; `token` is a secret."""

    pool: str
    zone: str
    endpoint_url: str  # the zone's API endpoint: kubelets use their own zone's
    ca_pem: str
    token: str  # "<id>.<secret>"
    kubernetes_version: str
    dns_address: str
    dns_domain: str
    lab: bool = False
    node_name: str | None = None  # lab only; AWS: the private DNS name
    node_address: str | None = None  # lab only; AWS: the private IPv4
    kubelet_path: str | None = None  # lab only; AWS: the pinned release, installed
    cgroup_root: str | None = None  # lab only


def bootstrap_kubeconfig(spec: JoinSpec) -> bytes:
    ca = base64.b64encode(spec.ca_pem.encode()).decode()
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n"
            f"    server: {spec.endpoint_url}\n    certificate-authority-data: {ca}\n"
            f"users:\n- name: tls-bootstrap\n  user:\n    token: {spec.token}\n"
            "contexts:\n- name: cluster\n  context: {cluster: cluster, user: tls-bootstrap}\n"
            "current-context: cluster\n").encode()


def _services(spec: JoinSpec) -> tuple[Service, Service]:
    kubelet_bin = spec.kubelet_path or f"{INSTALL_DIR}/kubelet"
    return containerd_config.service(), kc.service(
        kc.command(kubelet_bin, NAME_MARK, ADDRESS_MARK, spec.zone, tls_bootstrap=True))


def files(spec: JoinSpec) -> list[tuple[str, bytes, int]]:
    """(path, content, mode) of every file the script writes."""
    containerd, kubelet = _services(spec)
    settings = kc.KubeletSettings(lab=spec.lab, cluster_dns=spec.dns_address,
                                  cluster_domain=spec.dns_domain,
                                  cgroup_root=spec.cgroup_root, tls_bootstrap=True)
    config = containerd_config.for_node(spec.lab, pod_network=True)
    found = [(containerd_config.CONFIG_PATH, config.encode(), 0o644),
             (cni.TEMPLATE_PATH, cni.template(), 0o644),
             (kc.SYSCTL_FILE, kc.sysctl_conf(), 0o644),
             (kc.CONFIG_PATH, kc.config_yaml(settings), 0o644),
             (kc.CA_FILE, spec.ca_pem.encode(), 0o644),
             (kc.BOOTSTRAP_KUBECONFIG, bootstrap_kubeconfig(spec), 0o600),
             (unit_path("containerd"), render_unit(containerd).encode(), 0o644),
             (unit_path("kubelet"), render_unit(kubelet).encode(), 0o644)]
    if spec.lab:
        found.append((pause_image.ARCHIVE_PATH, pause_image.oci_image(), 0o644))
    return found


def _put(path: str, content: bytes, mode: int) -> str:
    """Atomic: a temp file beside it, then rename; the content as base64 (any bytes)."""
    q, tmp = shlex.quote(path), shlex.quote(path + ".mzk-tmp")
    data = base64.b64encode(content).decode()
    lines = [data[i:i + 76] for i in range(0, len(data), 76)]
    return "\n".join([f"mkdir -p $(dirname {q})", f"base64 -d > {tmp} <<'MZK_EOF'", *lines,
                      "MZK_EOF", f"chmod {mode:o} {tmp}", f"mv -f {tmp} {q}"])


def _identity(spec: JoinSpec) -> list[str]:
    if spec.lab:
        return [f"name={shlex.quote(spec.node_name or '')}",
                f"address={shlex.quote(spec.node_address or '')}"]
    return [f't=$(curl -fsS -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" '
            f"{IMDS}/api/token)",
            f'name=$(curl -fsS -m 5 -H "X-aws-ec2-metadata-token: $t" '
            f"{IMDS}/meta-data/local-hostname)",
            f'address=$(curl -fsS -m 5 -H "X-aws-ec2-metadata-token: $t" '
            f"{IMDS}/meta-data/local-ipv4)"]


def _install(spec: JoinSpec) -> list[str]:
    """Real hosts: the distribution's runtime packages, the pinned kubelet release."""
    if spec.lab:
        return []
    release = release_for(spec.kubernetes_version)
    if release is None:
        raise ValueError(f"Kubernetes {spec.kubernetes_version} has no pinned release")
    return ["export DEBIAN_FRONTEND=noninteractive",
            "apt-get update -q && apt-get install -y -q " + " ".join(PACKAGES),
            "arch=$(dpkg --print-architecture)",
            "[ \"$arch\" = amd64 ] || { echo \"mzk-join: $arch has no pinned kubelet\" >&2; "
            "exit 1; }",
            f"( {kubernetes_install_script(release, 'amd64', ('kubelet',))}\n)"]


def _start(name: str, lab: bool) -> str:
    if lab:  # the lab's keeper (no systemd there), detached like a service
        return (f"setsid python3 {SUPERVISOR_PATH} {name} </dev/null >/dev/null 2>&1 &")
    return f"systemctl daemon-reload && systemctl enable --now {name}.service"


def user_data(spec: JoinSpec) -> str:
    """The script (cloud-init runs it as root at first boot)."""
    sock = shlex.quote(kc.RUNTIME_SOCKET)
    kubelet_unit = shlex.quote(unit_path("kubelet"))
    lines = ["#!/bin/sh",
             f"# multizone-k8s: join pool {spec.pool} in {spec.zone} by TLS bootstrapping.",
             "set -eu", "umask 022", *_install(spec), *_identity(spec),
             '[ -n "$name" ] && [ -n "$address" ] || '
             '{ echo "mzk-join: no name or address for this node" >&2; exit 1; }']
    lines += [_put(path, content, mode) for path, content, mode in files(spec)]
    lines += [f"sed -i -e \"s/{NAME_MARK}/$name/g\" -e \"s/{ADDRESS_MARK}/$address/g\" "
              f"{kubelet_unit}",
              f"sysctl -q -p {kc.SYSCTL_FILE}",
              _start("containerd", spec.lab)]
    if spec.lab:
        lines += [f"for i in $(seq 100); do [ -S {sock} ] && break; sleep 0.1; done",
                  f"ctr --address {sock} -n k8s.io images import "
                  f"{pause_image.ARCHIVE_PATH} >/dev/null"]
    lines += [_start("kubelet", spec.lab), 'echo "mzk-join: $name started its kubelet"']
    return "\n".join(lines) + "\n"
