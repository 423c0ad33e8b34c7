"""Binaries: on real hosts, official release archives pinned by checksum; on lab hosts, the
ones on this machine (Debian's etcd; Kubernetes from the local binaries directory), which
the lab cannot download.

The facts record which binaries a host ended up with (`facts["etcd"]`, `facts["etcdctl"]`,
`facts["k8s"]`: name -> path, `facts["k8s_id"]`: name -> identity), so later steps render
the same command line whichever way they came, and a unit names the identity of its binary:
a new binary changes the unit, and a changed unit restarts its service.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from bootstrap.egress import konnectivity_release
from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.inventory import Host, Inventory
from bootstrap.k8s_bin import CONTROL_PLANE_BINARIES, LocalBinaries
from bootstrap.k8s_releases import SERVER_BIN_DIR, K8sRelease, release_for, supported_versions

INSTALL_DIR = "/usr/local/bin"


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    url: str
    sha256: str  # of the archive, from the project's release checksums
    members: tuple[str, ...]  # binaries inside the archive's top directory


# etcd v3.5.6, linux/amd64. The checksum is the release's published sha256 of the archive;
# this machine cannot reach the download to re-check it.
ETCD_RELEASE = Release(
    name="etcd", version="3.5.6",
    url="https://github.com/etcd-io/etcd/releases/download/v3.5.6/etcd-v3.5.6-linux-amd64.tar.gz",
    sha256="4db32e3bc06dd0999e2171f76a87c1cffed8369475ec7aa7abee9023635670fb",
    members=("etcd", "etcdctl"),
)


def install_script(release: Release, install_dir: str = INSTALL_DIR) -> str:
    """Download, verify the sha256 before anything is unpacked, install atomically."""
    q = shlex.quote
    top = release.url.rsplit("/", 1)[1].removesuffix(".tar.gz")
    lines = ["set -e", "work=$(mktemp -d)", "trap 'rm -rf \"$work\"' EXIT",
             f"curl -fsSL --retry 3 -o \"$work/a.tgz\" {q(release.url)}",
             f"[ \"$(sha256sum < \"$work/a.tgz\" | cut -d' ' -f1)\" = {release.sha256} ] || "
             f"{{ echo '{release.name}: archive sha256 mismatch' >&2; exit 1; }}",
             "tar -xzf \"$work/a.tgz\" -C \"$work\""]
    for member in release.members:
        temp, final = q(f"{install_dir}/.{member}.mzk"), q(f"{install_dir}/{member}")
        lines += [f"install -m 0755 \"$work/{top}/{member}\" {temp}", f"mv -f {temp} {final}"]
    return "\n".join(lines)


def ensure_etcd(ctx: HostContext) -> None:
    bins = ctx.facts["bin"]
    if ctx.facts.get("lab"):
        if not bins.get("etcd") or not bins.get("etcdctl"):
            raise StepError(f"{ctx.name}: lab host without etcd: apt-get install etcd-server "
                            "etcd-client on this machine")
        ctx.facts["etcd"], ctx.facts["etcdctl"] = bins["etcd"], bins["etcdctl"]
        ctx.facts["etcd_id"] = f"v{ctx.facts.get('etcd_version')}"
        return
    if ctx.facts.get("arch") not in ("x86_64", "amd64"):
        raise StepError(f"{ctx.name}: architecture {ctx.facts.get('arch')} has no pinned etcd "
                        "release; use amd64 hosts")
    ctx.facts["etcd"] = f"{INSTALL_DIR}/etcd"
    ctx.facts["etcdctl"] = f"{INSTALL_DIR}/etcdctl"
    ctx.facts["etcd_id"] = f"v{ETCD_RELEASE.version}/sha256:{ETCD_RELEASE.sha256[:32]}"
    if ctx.facts.get("etcd_version") == ETCD_RELEASE.version \
            and bins.get("etcd") == ctx.facts["etcd"]:
        return
    missing = [tool for tool in ("curl", "tar") if not bins.get(tool)]
    if missing:
        raise StepError(f"{ctx.name}: {' and '.join(missing)} not found, needed to install "
                        f"etcd {ETCD_RELEASE.version}; install them (apt-get install "
                        f"{' '.join(missing)}) or use an image that has them")
    ctx.note(f"install etcd {ETCD_RELEASE.version} from the pinned release archive")
    if not ctx.dry_run:
        ctx.runner.run(install_script(ETCD_RELEASE), timeout=300)


K8S_RELEASE_MARK = "/var/lib/mzk/kubernetes-release"  # "<version> <archive sha512>"
# Konnectivity releases follow Kubernetes minor versions (v0.36 serves 1.36).
KONNECTIVITY_FOR_KUBERNETES = {"1.36": "0.36.0", "1.35": "0.35.0", "1.34": "0.34.0"}


def release_marker(version: str, sha512: str, names: tuple[str, ...]) -> str:
    """The marker's line: the release, and which of its binaries this host holds."""
    return " ".join([version, sha512, *names])


def kubernetes_install_script(release: K8sRelease, arch: str, names: tuple[str, ...],
                              install_dir: str = INSTALL_DIR) -> str:
    """Download the server archive, check its sha512 before unpacking, install the named
    binaries atomically, then record the release (last, so a cut run installs again)."""
    q = shlex.quote
    archive = release.archive("server", arch)
    lines = ["set -e", "work=$(mktemp -d)", "trap 'rm -rf \"$work\"' EXIT",
             f"curl -fsSL --retry 3 -o \"$work/k.tgz\" {q(release.url('server', arch))}",
             f"[ \"$(sha512sum < \"$work/k.tgz\" | cut -d' ' -f1)\" = {archive.sha512} ] || "
             f"{{ echo 'kubernetes {release.version}: archive sha512 mismatch' >&2; exit 1; }}",
             "tar -xzf \"$work/k.tgz\" -C \"$work\" "
             + " ".join(q(f"{SERVER_BIN_DIR}/{n}") for n in names)]
    for name in names:
        temp, final = q(f"{install_dir}/.{name}.mzk"), q(f"{install_dir}/{name}")
        lines += [f"install -m 0755 \"$work/{SERVER_BIN_DIR}/{name}\" {temp}",
                  f"mv -f {temp} {final}"]
    mark = q(K8S_RELEASE_MARK)
    lines += [f"mkdir -p $(dirname {mark})",
              f"echo {q(release_marker(release.version, archive.sha512, names))} > {mark}.tmp",
              f"mv -f {mark}.tmp {mark}"]
    return "\n".join(lines)


def kubernetes_binaries(host: Host) -> tuple[str, ...]:
    """The control plane's binaries on its hosts, the kubelet on nodes."""
    return ((CONTROL_PLANE_BINARIES if host.has("control-plane") else ())
            + (("kubelet",) if host.has("node") else ()))


def ensure_kubernetes(ctx: HostContext) -> None:
    """The Kubernetes binaries a host needs: the local directory's on lab hosts, the pinned
    official release on real hosts."""
    names = kubernetes_binaries(ctx.host)
    local: LocalBinaries | None = ctx.shared.get("k8s_bin")
    if ctx.facts.get("lab"):
        if local is None:
            raise StepError(f"{ctx.name}: a lab host needs Kubernetes binaries from this "
                            "machine: give --k8s-bin-dir DIR or set MZK_K8S_BIN_DIR")
        ctx.facts["k8s"] = {n: local.path(n) for n in names}
        ctx.facts["k8s_id"] = {n: f"sha256:{local.digests[n]}" for n in names}
        return
    version = ctx.inventory.cluster.kubernetes_version
    release = release_for(version)
    if release is None:
        raise StepError(f"{ctx.name}: Kubernetes {version} has no pinned release; use one "
                        f"of {', '.join(supported_versions())}")
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64"}.get(
        str(ctx.facts.get("arch")))
    if arch is None:
        raise StepError(f"{ctx.name}: architecture {ctx.facts.get('arch')} has no pinned "
                        "Kubernetes release; use amd64 or arm64 hosts")
    sha512 = release.archive("server", arch).sha512
    ctx.facts["k8s"] = {n: f"{INSTALL_DIR}/{n}" for n in names}
    ctx.facts["k8s_id"] = {n: f"v{release.version}/sha512:{sha512[:32]}" for n in names}
    if ctx.facts.get("k8s_release") == release_marker(release.version, sha512, names):
        return
    missing = [tool for tool in ("curl", "tar") if not ctx.facts["bin"].get(tool)]
    if missing:
        raise StepError(f"{ctx.name}: {' and '.join(missing)} not found, needed to install "
                        f"Kubernetes {release.version}; install them")
    ctx.note(f"install Kubernetes {release.version} ({', '.join(names)}) from the pinned "
             "release archive")
    if not ctx.dry_run:
        ctx.runner.run(kubernetes_install_script(release, arch, names), timeout=900)


def konnectivity_binary(host: Host) -> str:
    """proxy-server on control-plane hosts, proxy-agent on nodes."""
    return "proxy-server" if host.has("control-plane") else "proxy-agent"


def ensure_konnectivity(ctx: HostContext) -> None:
    name = konnectivity_binary(ctx.host)
    local: LocalBinaries | None = ctx.shared.get("k8s_bin")
    if ctx.facts.get("lab"):
        if local is None or name not in local.paths:
            raise StepError(f"{ctx.name}: a lab host in konnectivity mode needs {name} from "
                            "this machine: put it in --k8s-bin-dir / MZK_K8S_BIN_DIR")
        ctx.facts["konnectivity"] = local.path(name)
        ctx.facts["konnectivity_id"] = f"sha256:{local.digests[name]}"
        return
    minor = ".".join(ctx.inventory.cluster.kubernetes_version.split(".")[:2])
    version = KONNECTIVITY_FOR_KUBERNETES.get(minor)
    if version is None:
        raise StepError(f"{ctx.name}: no Konnectivity release is pinned for Kubernetes {minor}; "
                        f"use one of {', '.join(sorted(KONNECTIVITY_FOR_KUBERNETES))} or "
                        "cluster.egress: ssh-tunnel")
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64"}.get(
        str(ctx.facts.get("arch")))
    if arch is None:
        raise StepError(f"{ctx.name}: architecture {ctx.facts.get('arch')} has no Konnectivity "
                        "image; use amd64 or arm64 hosts")
    digest = konnectivity_release.pinned_digest(name, version)
    ctx.facts["konnectivity"] = f"{konnectivity_release.INSTALL_DIR}/{name}"
    ctx.facts["konnectivity_id"] = f"v{version}/{digest}"
    if ctx.facts.get(f"konnectivity_release.{name}") == konnectivity_release.marker_line(
            name, version, digest):
        return
    missing = [tool for tool in ("curl", "tar", "python3") if not ctx.facts["bin"].get(tool)]
    if missing:
        raise StepError(f"{ctx.name}: {' and '.join(missing)} not found, needed to install "
                        f"{name} {version}; install them")
    ctx.note(f"install {name} {version} from its pinned image ({digest[:19]}...)")
    if not ctx.dry_run:
        ctx.runner.run(konnectivity_release.install_script(name, version, digest, arch),
                       timeout=600)


def ensure_all(ctx: HostContext) -> None:
    if ctx.host.has("etcd"):
        ensure_etcd(ctx)
    if ctx.host.has("control-plane") or ctx.host.has("node"):
        ensure_kubernetes(ctx)
    if ctx.inventory.cluster.egress == "konnectivity" and (
            ctx.host.has("control-plane") or ctx.host.has("node")):
        ensure_konnectivity(ctx)


def _binary_hosts(inventory: Inventory) -> tuple[Host, ...]:
    return tuple(h for h in inventory.hosts if h.has("etcd") or h.has("control-plane")
                 or h.has("node"))


BINARIES = Step("binaries", _binary_hosts, run=ensure_all)
