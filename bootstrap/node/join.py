"""The user data of an auto-scaled node: a shell script that joins it by kubelet TLS
bootstrapping (seed 001), with nothing from the bootstrap over SSH and no shared secret.

It writes the same files the nodes step writes on inventory nodes (containerd's config, the
pod network template, the kernel values, the kubelet's configuration with
`serverTLSBootstrap` and `rotateCertificates`), then the kubelet's bootstrap kubeconfig, whose
credential is the instance's own identity: the document the cloud signed for this instance
and its signature, read from the instance metadata service when the script runs
(`mzk-iid.<base64url document>.<base64url signature>`). The API server has the approver's
webhook check it (signature, account, region, a running instance of a pool of this cluster,
not yet registered); the approver then approves a client certificate only for that
instance's own name (bootstrap.node.csr_approver). The script holds nothing secret: the CA
certificate is public and each node's credential is made on the node.

On AWS everything comes from IMDSv2 (a session token first, then GETs), which the launch
template requires, with a hop limit of 1 so that pods cannot read the document; packages and
the pinned kubelet release are installed first. In the lab the launcher (bootstrap.lab.launch)
leaves the same answers in the host's own /run (bootstrap.lab.imds), and gives the kubelet
binary, as the lab's "image".
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

from bootstrap.k8s_releases import release_for
from bootstrap.node import cni, containerd_config, pause_image, pod_network_unit
from bootstrap.node import kubelet_config as kc
from bootstrap.services import SUPERVISOR_PATH, Service, render_unit, unit_path
from bootstrap.steps.binaries import INSTALL_DIR, kubernetes_install_script

NAME_MARK, ADDRESS_MARK = "@NODE_NAME@", "@NODE_ADDRESS@"
TOKEN_MARK = "@IDENTITY_TOKEN@"  # noqa: S105 - a placeholder, no secret
TOKEN_PREFIX = "mzk-iid."  # noqa: S105 - instance_identity.identity_token's scheme
PACKAGES = ("containerd", "runc", "containernetworking-plugins", "curl")
IMDS = "http://169.254.169.254/latest"
HEREDOC_MARK = "MZK_EOF"
LAB_IMDS = "/run/mzk-imds"  # bootstrap.lab.imds.HOST_DIR: the lab's "metadata service"
DOCUMENT = "dynamic/instance-identity/document"
SIGNATURE = "dynamic/instance-identity/signature"


@dataclass(frozen=True)
class JoinSpec:
    """Everything a node of one pool needs to join; nothing in it is secret."""

    pool: str
    zone: str
    endpoint_url: str  # the zone's API endpoint: kubelets use their own zone's
    ca_pem: str
    kubernetes_version: str
    dns_address: str
    dns_domain: str
    lab: bool = False
    imds_dir: str = LAB_IMDS  # lab only: where the lab's "metadata service" answers
    claim: str | None = None  # lab impostors only: ask for this name, not the instance's
    kubelet_path: str | None = None  # lab only; AWS: the pinned release, installed
    cgroup_root: str | None = None  # lab only
    # The pod network (cluster.cni bridge): our agent, with the pool's pod and service CIDRs.
    pod_network: bool = True
    cluster_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    lab_images: tuple[str, ...] = ()  # lab only: add-on image archives to import (the "AMI")


def bootstrap_kubeconfig(spec: JoinSpec, token: str) -> bytes:
    """The kubelet's bootstrap kubeconfig; the script writes it with the token it built."""
    ca = base64.b64encode(spec.ca_pem.encode()).decode()
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n"
            f"    server: {spec.endpoint_url}\n    certificate-authority-data: {ca}\n"
            f"users:\n- name: tls-bootstrap\n  user:\n    token: {token}\n"
            "contexts:\n- name: cluster\n  context: {cluster: cluster, user: tls-bootstrap}\n"
            "current-context: cluster\n").encode()


def _services(spec: JoinSpec) -> tuple[Service, Service]:
    kubelet_bin = spec.kubelet_path or f"{INSTALL_DIR}/kubelet"
    return containerd_config.service(), kc.service(
        kc.command(kubelet_bin, NAME_MARK, ADDRESS_MARK, spec.zone, tls_bootstrap=True))


def files(spec: JoinSpec) -> list[tuple[str, bytes, int]]:
    """(path, content, mode) of every file the script writes as it is (the bootstrap
    kubeconfig, made on the node, is `kubeconfig_script`'s)."""
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
             (unit_path("containerd"), render_unit(containerd).encode(), 0o644),
             (unit_path("kubelet"), render_unit(kubelet).encode(), 0o644)]
    if spec.pod_network:
        agent = pod_network_unit.command(
            server=spec.endpoint_url, credential=pod_network_unit.ROTATED_CREDENTIAL,
            node=NAME_MARK, cluster_cidr=spec.cluster_cidr, service_cidr=spec.service_cidr)
        found += [(path, content, 0o755 if path == pod_network_unit.PROGRAM else 0o644)
                  for path, content in pod_network_unit.program_files(compact=True).items()]
        found.append((unit_path(pod_network_unit.NAME),
                      render_unit(pod_network_unit.service(agent)).encode(), 0o644))
    if spec.lab:
        found.append((pause_image.ARCHIVE_PATH, pause_image.oci_image(), 0o644))
    return found


def _put(path: str, content: bytes, mode: int) -> str:
    """Atomic: a temp file beside it, then rename. Text as it is (a quoted here-document:
    the launch template gzips the whole script, and plain text compresses best), anything
    else as base64."""
    q, tmp = shlex.quote(path), shlex.quote(path + ".mzk-tmp")
    try:
        text = content.decode()
    except UnicodeDecodeError:
        text = ""
    lines = text.split("\n")[:-1]
    if text.endswith("\n") and HEREDOC_MARK not in lines:
        body = [f"cat > {tmp} <<'{HEREDOC_MARK}'", *lines, HEREDOC_MARK]
    else:
        data = base64.b64encode(content).decode()
        body = [f"base64 -d > {tmp} <<'{HEREDOC_MARK}'",
                *(data[i:i + 76] for i in range(0, len(data), 76)), HEREDOC_MARK]
    return "\n".join([f"mkdir -p $(dirname {q})", *body, f"chmod {mode:o} {tmp}",
                      f"mv -f {tmp} {q}"])


def identity_script(spec: JoinSpec) -> list[str]:
    """Shell lines that set `name`, `address` and `token` (the identity token) from the
    metadata service: IMDSv2 on AWS, the host's own files in the lab. The document is
    encoded from the exact bytes served (never through a shell variable)."""
    if spec.lab:
        get = [f'imds() {{ cat {shlex.quote(spec.imds_dir)}/"$1"; }}']
    else:
        get = [f't=$(curl -fsS -m 5 --retry 5 --retry-connrefused -X PUT '
               f'-H "X-aws-ec2-metadata-token-ttl-seconds: 300" {IMDS}/api/token)',
               'imds() { curl -fsS -m 5 --retry 5 --retry-connrefused '
               f'-H "X-aws-ec2-metadata-token: $t" "{IMDS}/$1"; }}']
    return [*get,
            "b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }",
            'name=$(imds meta-data/local-hostname)',
            'address=$(imds meta-data/local-ipv4)',
            *([f"name={shlex.quote(spec.claim)}"] if spec.lab and spec.claim else []),
            'iid=$(mktemp -d)', 'trap \'rm -rf "$iid"\' EXIT',
            f'imds {DOCUMENT} > "$iid/document"',
            f'imds {SIGNATURE} > "$iid/signature"',
            '[ -s "$iid/document" ] && [ -s "$iid/signature" ] || '
            '{ echo "mzk-join: no instance identity document" >&2; exit 1; }',
            f'token="{TOKEN_PREFIX}$(b64url < "$iid/document").'
            '$(base64 -d < "$iid/signature" | b64url)"',
            'rm -rf "$iid"']


def kubeconfig_script(spec: JoinSpec, path: str = kc.BOOTSTRAP_KUBECONFIG) -> str:
    """Write the bootstrap kubeconfig with `$token`, atomically and 0600 from the start;
    the token goes through `printf`, a shell built-in (never a command line)."""
    before, after = bootstrap_kubeconfig(spec, TOKEN_MARK).decode().split(
        f"    token: {TOKEN_MARK}\n")
    q, tmp = shlex.quote(path), shlex.quote(path + ".mzk-tmp")
    return "\n".join([f"mkdir -p $(dirname {q})", "( umask 077",
                      f"{{ cat <<'MZK_EOF'\n{before.rstrip(chr(10))}\nMZK_EOF",
                      "printf '    token: %s\\n' \"$token\"",
                      f"cat <<'MZK_EOF'\n{after.rstrip(chr(10))}\nMZK_EOF",
                      f"}} > {tmp} )", f"chmod 600 {tmp}", f"mv -f {tmp} {q}"])


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
             "set -eu", "umask 022", *_install(spec), *identity_script(spec),
             # Both go into the kubelet's unit: a DNS name and an IPv4 address, nothing else.
             'case "$name" in ""|*[!a-z0-9.-]*) name_ok=0 ;; *) name_ok=1 ;; esac',
             'case "$address" in ""|*[!0-9.]*) name_ok=0 ;; esac',
             '[ "$name_ok" = 1 ] || '
             '{ echo "mzk-join: no usable name or address for this node" >&2; exit 1; }']
    lines += [_put(path, content, mode) for path, content, mode in files(spec)]
    lines.append(kubeconfig_script(spec))
    units = kubelet_unit + (f" {shlex.quote(unit_path(pod_network_unit.NAME))}"
                            if spec.pod_network else "")
    lines += [f"sed -i -e \"s/{NAME_MARK}/$name/g\" -e \"s/{ADDRESS_MARK}/$address/g\" "
              f"{units}",
              f"sysctl -q -p {kc.SYSCTL_FILE}",
              _start("containerd", spec.lab)]
    if spec.lab:
        lines += [f"for i in $(seq 100); do [ -S {sock} ] && break; sleep 0.1; done",
                  *(f"ctr --address {sock} -n k8s.io images import {shlex.quote(a)} >/dev/null"
                    for a in (pause_image.ARCHIVE_PATH, *spec.lab_images))]
    lines += [_start("kubelet", spec.lab), 'echo "mzk-join: $name started its kubelet"']
    if spec.pod_network:
        lines.append(_start(pod_network_unit.NAME, spec.lab))
    return "\n".join(lines) + "\n"
