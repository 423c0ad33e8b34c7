"""etcd's own disk: the volume a host's inventory entry names (`etcd_volume`) is found,
formatted once (ext4, only when it carries no file system or partition table at all) and
mounted at /var/lib/etcd, before etcd starts.

- AWS: the program attaches an encrypted EBS volume to each control-plane host; on Nitro
  instances it appears as an NVMe device whose serial is the volume ID without its dash
  (`vol0123...`), found under /dev/disk/by-id or /sys/class/block/nvme*/device/serial. The
  mount is recorded in /etc/fstab by UUID (`nofail`), so it survives a reboot.
- Lab: a loop device per control-plane host; the mount lives in the host's own mount
  namespace (the lab never edits this machine's fstab).
- A member that already keeps its data on the root disk (a cluster made before this step
  existed) is moved one host at a time: its etcd services stop (the others keep the
  quorum), the data is copied onto the volume, the old copy is moved aside under
  /var/lib/mzk (kept, never deleted), the volume is mounted and the services start again,
  healthy before the next host.

Nothing is ever formatted that has a signature, and a different device already mounted at
/var/lib/etcd stops the step for that host, naming both.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.host_fanout import HostsFailed, run_on_hosts
from bootstrap.inventory import Host, Inventory
from bootstrap.steps import etcd

MOUNT_POINT = "/var/lib/etcd"
ASIDE_DIR = "/var/lib/mzk"
_VOLUME_ID = re.compile(r"vol-[0-9a-f]{8,17}\Z", re.ASCII)


def resolve_script(volume: str) -> str:
    """Shell printing the device path for an EBS volume ID or a device path."""
    if not _VOLUME_ID.match(volume):
        return f"readlink -f {shlex.quote(volume)}"
    serial = volume.replace("-", "")
    return (f"for d in /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}; do "
            "[ -e \"$d\" ] && { readlink -f \"$d\"; exit 0; }; done; "
            "for s in /sys/class/block/nvme*/device/serial; do "
            f"[ \"$(tr -d ' ' < \"$s\" 2>/dev/null)\" = {serial} ] || continue; "
            "b=${s%/device/serial}; echo /dev/${b##*/}; exit 0; done; exit 3")


def state_script(volume: str) -> str:
    q = shlex.quote(MOUNT_POINT)
    return "\n".join([
        f"dev=$( {resolve_script(volume)} ) || {{ echo 'device -'; exit 0; }}",
        'echo "device $dev"',
        'echo "signature $(blkid -p -o value -s TYPE "$dev" 2>/dev/null || true)'
        '$(blkid -p -o value -s PTTYPE "$dev" 2>/dev/null || true)"',
        'echo "devnum $(printf \'%d:%d\' 0x$(stat -L -c %t "$dev") 0x$(stat -L -c %T "$dev"))"',
        # The topmost mount at the mount point: "MAJ:MIN FSROOT" (a bind mount of a
        # directory has FSROOT other than /: the root disk, as far as etcd is concerned).
        f'echo "mounted $(findmnt -n -r -o MAJ:MIN,FSROOT --mountpoint {q} 2>/dev/null '
        '| tail -n1)"',
        f'echo "data $(ls -A {q} 2>/dev/null | head -n1)"',
    ]) + "\n"


@dataclass(frozen=True)
class VolumeState:
    device: str | None
    signature: str
    device_number: str  # "259:1"
    mounted: str  # the device number of a whole file system mounted there, or ""
    has_data: bool

    @classmethod
    def parse(cls, text: str) -> VolumeState:
        fields = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
        device = fields.get("device", "-")
        number, _, root = fields.get("mounted", "").partition(" ")
        return cls(None if device in ("", "-") else device, fields.get("signature", ""),
                   fields.get("devnum", ""), number if root == "/" else "",
                   bool(fields.get("data")))


def _state(ctx: HostContext) -> VolumeState:
    """From the facts round trip (`facts_section`), else asked now."""
    known = ctx.facts.pop("etcd_volume_state", None)
    if isinstance(known, VolumeState):
        return known
    volume = ctx.host.etcd_volume
    assert volume is not None
    return VolumeState.parse(ctx.runner.run(state_script(volume)).stdout)


def facts_section(ctx: HostContext) -> dict[str, str]:
    """The volume's state, asked beside the other facts: a converged host costs no round
    trip here."""
    volume = ctx.host.etcd_volume
    if not volume or not ctx.host.has("etcd"):
        return {}
    return {"etcd_volume": "(\n" + state_script(volume) + ")"}


def _mount_commands(ctx: HostContext, device: str) -> list[str]:
    q, d = shlex.quote(MOUNT_POINT), shlex.quote(device)
    commands = [f"mkdir -p {q}"]
    if not ctx.facts.get("lab"):  # real hosts: remembered across reboots, by UUID
        commands += [
            f"uuid=$(blkid -s UUID -o value {d})",
            f"grep -v '[[:space:]]{MOUNT_POINT}[[:space:]]' /etc/fstab > /etc/fstab.mzk",
            f"echo \"UUID=$uuid {MOUNT_POINT} ext4 defaults,nofail,noatime 0 2\" "
            ">> /etc/fstab.mzk",
            "mv -f /etc/fstab.mzk /etc/fstab"]
    commands += [f"mount -t ext4 -o noatime {d} {q}", f"chmod 0700 {q}"]
    return commands


def converge_host(ctx: HostContext) -> bool:
    """Bring one host's volume to spec; True if it moved a running member's data (the
    caller then waits for the member's health before the next host)."""
    found = _state(ctx)
    volume = ctx.host.etcd_volume
    if found.device is None:
        raise StepError(f"{ctx.name}: etcd volume {volume} not found (no such device); "
                        "check that it is attached to this host")
    if found.mounted:
        if found.mounted == found.device_number:
            return False
        raise StepError(f"{ctx.name}: {MOUNT_POINT} already has device {found.mounted} "
                        f"mounted, not the etcd volume {volume} ({found.device}, "
                        f"{found.device_number}); unmount it or fix the inventory")
    if found.signature and found.signature != "ext4":
        raise StepError(f"{ctx.name}: etcd volume {volume} ({found.device}) holds "
                        f"{found.signature}, not ext4; it is never formatted over: wipe it "
                        "by hand if it is really free")
    d = shlex.quote(found.device)
    script = ["set -e"]
    if not found.signature:
        ctx.note(f"format {found.device} (ext4) for etcd")
        script.append(f"mkfs.ext4 -q -L etcd {d}")
    moving = found.has_data
    running = [c for c in etcd.CLUSTERS if etcd.member_running(ctx, c)]
    if moving:
        ctx.note(f"move etcd's data from the root disk onto {found.device}")
        tmp = "/var/lib/mzk/etcd-volume.mnt"
        aside = f"{ASIDE_DIR}/etcd-root-disk-$(date -u +%Y%m%dT%H%M%S)"
        script += [f"mkdir -p {tmp}", f"mount -t ext4 {d} {tmp}",
                   f"cp -a {MOUNT_POINT}/. {tmp}/", f"umount {tmp}", f"rmdir {tmp}",
                   f"mkdir -p {aside}",
                   f"find {MOUNT_POINT} -mindepth 1 -maxdepth 1 -exec mv -t {aside} {{}} +"]
    ctx.note(f"mount {found.device} at {MOUNT_POINT}")
    if ctx.dry_run:
        # What etcd will find once the volume is mounted, read without mounting it, so
        # that the plan's etcd lines are the apply's.
        if found.signature == "ext4" and not moving:
            _peek(ctx, found.device)
        return moving and bool(running)
    # What the facts saw under the mount point is not what etcd will find: probe anew.
    ctx.facts.pop("etcd_facts", None)
    manager = etcd._manager(ctx)
    if moving:
        for cluster in running:
            manager.stop(ctx.runner, cluster.service)
    ctx.runner.run("\n".join(script + _mount_commands(ctx, found.device)), timeout=900)
    if moving:
        for cluster in running:
            manager.restart(ctx.runner, cluster.service)
    return moving and bool(running)


def _peek(ctx: HostContext, device: str) -> None:
    """In a plan: which members keep data on the (unmounted) volume, by debugfs (read-only,
    no mount); the facts' probes are corrected to it."""
    known = ctx.facts.get("etcd_facts")
    if not isinstance(known, dict):
        return
    for cluster in etcd.CLUSTERS:
        inside = cluster.data_dir.removeprefix(MOUNT_POINT) + "/member"
        found = ctx.runner.run(f"debugfs -R {shlex.quote('stat ' + inside)} "
                               f"{shlex.quote(device)} 2>&1 | grep -q '^Inode:'",
                               check=False).ok
        probe = known.get(f"probe:{cluster.service}")
        if isinstance(probe, etcd.Probe):
            known[f"probe:{cluster.service}"] = etcd.Probe(has_data=found, unit=probe.unit)


def converge(group: list[HostContext]) -> None:
    """Hosts whose members keep running are moved one at a time (the quorum holds);
    the others (new hosts, stopped members) side by side."""
    with_volume = [c for c in group if c.host.etcd_volume]
    moving = [c for c in with_volume if any(etcd.member_running(c, s) for s in etcd.CLUSTERS)
              and c.facts.get("etcd_traces")]
    rest = [c for c in with_volume if c not in moving]
    failures: dict[str, BaseException] = {}
    if rest:
        try:
            run_on_hosts(rest, converge_host, rest[0].inventory.ssh.parallel,
                         title="etcd-volume", progress=lambda *_: None)
        except HostsFailed as err:
            failures.update(err.failures)
    for ctx in moving:  # one at a time, each member healthy again before the next
        try:
            if converge_host(ctx) and not ctx.dry_run:
                for cluster in etcd.CLUSTERS:
                    etcd.wait_healthy(ctx, cluster)
        except Exception as err:  # noqa: BLE001 - named per host below
            failures[ctx.name] = err
            break  # the quorum may be short of this member: move no other
    if failures:
        raise HostsFailed("etcd-volume", failures,
                          {c.name: None for c in with_volume if c.name not in failures})


def _etcd_hosts(inventory: Inventory) -> tuple[Host, ...]:
    return tuple(h for h in inventory.etcd_members if h.etcd_volume)


ETCD_VOLUME = Step("etcd-volume", _etcd_hosts, run_together=converge)
