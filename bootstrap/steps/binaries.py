"""Binaries: on real hosts, official release archives pinned by sha256; on lab hosts, the
ones installed on this machine (Debian's etcd), which the lab cannot download.

The facts record which etcd a host ended up with (`facts["etcd"]`, `facts["etcdctl"]`), so
later steps render the same command line whichever way it came.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.inventory import Inventory

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
        return
    if ctx.facts.get("arch") not in ("x86_64", "amd64"):
        raise StepError(f"{ctx.name}: architecture {ctx.facts.get('arch')} has no pinned etcd "
                        "release; use amd64 hosts")
    ctx.facts["etcd"] = f"{INSTALL_DIR}/etcd"
    ctx.facts["etcdctl"] = f"{INSTALL_DIR}/etcdctl"
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


def _etcd_hosts(inventory: Inventory):  # type: ignore[no-untyped-def]
    return inventory.etcd_members


BINARIES = Step("binaries", _etcd_hosts, run=ensure_etcd)
