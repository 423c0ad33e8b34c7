"""The lab's auto scaling: launch a node that is in no inventory and joins by itself.

What EC2 and an auto scaling group do for a real pool, done on this machine: a new host
(namespace, address in its zone, sshd as on every lab host, the lab's supervisor as the
"image" carries systemd) with an instance ID; an entry in the lab's instance record (what the
approver looks instances up in instead of the EC2 API; every control-plane host holds a copy,
as every one can call EC2); the identity document the lab's "cloud" signs for it, left where
its metadata service would answer (bootstrap.lab.imds); then the pool's user data
(bootstrap.node.join) run as root inside the host, as cloud-init would. The user data holds
no secret, and the bootstrap never logs in to the host.

Impostors, for the tests and for anyone who wants to see the approver refuse: `claim` runs
the user data with the host's own identity but asks for another node's name; `steal` gives
the host a copy of another launched instance's signed document (as if it had been read off
that instance) in place of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bootstrap import k8s_bin
from bootstrap.addons import lab_images
from bootstrap.errors import ConfigError, MultizoneError
from bootstrap.inventory import load as load_inventory
from bootstrap.k8s_bin import resolve_dir
from bootstrap.lab import build, cgroups, imds
from bootstrap.lab.layout import ZONES, LabHost, plan, zone_subnet
from bootstrap.lab.resize import add_hosts
from bootstrap.node import join
from bootstrap.pki import files
from bootstrap.services import SUPERVISOR_PATH, SUPERVISOR_SOURCE
from bootstrap.steps.node_join import LAB_RECORD

FIRST_INDEX = 100  # launched hosts take .100 and up in their zone's subnet


class LaunchError(MultizoneError):
    """The lab could not launch a node."""


@dataclass(frozen=True)
class Launched:
    name: str  # the instance's own name (its private DNS name), as the record lists it
    instance_id: str
    claimed: str  # the name its kubelet asks for
    address: str
    zone: str
    pool: str
    user_data: str  # the script it ran
    user_data_output: str


_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _pool_of(lab_dir: Path, zone: str) -> str:
    inventory = load_inventory(lab_dir / "inventory.yaml")
    pool = next((p for p in inventory.node_pools if p.zone == zone), None)
    if pool is None:
        raise LaunchError(f"the lab's inventory has no node pool in zone {zone}")
    return pool.name


def _record(lab_dir: Path, control_plane: list[LabHost], entry: dict[str, object]) -> None:
    """Add the instance to every control-plane host's copy of the record (atomically)."""
    for host in control_plane:
        path = host.home(lab_dir) / "fs" / LAB_RECORD.lstrip("/")
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {"instances": []}
        record["instances"] = [i for i in record["instances"]
                               if i.get("instance_id") != entry["instance_id"]
                               and i.get("name") != entry["name"]]
        record["instances"].append(entry)
        files.write(path, (json.dumps(record, indent=1) + "\n").encode(), 0o644)


def _check_flags(lab_dir: Path, zone: str, claim: str | None, steal: str | None) -> None:
    if zone not in ZONES:
        raise ConfigError(f"--zone {zone!r}: use one of {', '.join(ZONES)}")
    if claim is not None and not _NAME.fullmatch(claim):
        raise ConfigError(f"--claim {claim!r}: give a node name (a DNS label, e.g. node-1)")
    if steal is not None and steal not in build.State.load(lab_dir).data.get("launched", []):
        raise ConfigError(f"--steal {steal!r}: give the name of a node launched into this lab "
                          "(e.g. auto-b1); only launched instances have identity documents")


def launch(lab_dir: Path, zone: str, claim: str | None = None, steal: str | None = None,
           boot: bool = True) -> Launched:
    """Launch one node in `zone`'s pool; returns once its user data ran (the kubelet then
    joins on its own, if the control plane lets it). `boot=False`: the instance is running
    and has its identity, but its user data has not run yet (an instance still booting)."""
    lab_dir = lab_dir.resolve()
    _check_flags(lab_dir, zone, claim, steal)
    bins = resolve_dir(None)
    if bins is None:
        raise LaunchError("set MZK_K8S_BIN_DIR: the lab's nodes run its kubelet")
    state = build.State.load(lab_dir)
    layout = plan(lab_dir, state.data.get("workers", 3), state.data.get("link_slot"))
    letter, pool = zone[-1], _pool_of(lab_dir, zone)
    launched = state.data.setdefault("launched", [])
    n = 1 + sum(1 for name in launched if name.startswith(f"auto-{letter}"))
    name = f"auto-{letter}{n}"
    net = zone_subnet(ZONES.index(zone))
    host = LabHost(name, zone, ("node",), str(net[FIRST_INDEX + n - 1]), str(net[1]),
                   f"{layout.prefix}-{name}", f"j{letter}{n}", f"br-{letter}")
    launched.append(name)
    state.save()
    add_hosts(layout, [host], build.State.load(lab_dir))  # as a resize adds workers
    root = host.home(lab_dir) / "fs"
    files.write(root / SUPERVISOR_PATH.lstrip("/"), SUPERVISOR_SOURCE, 0o755)
    instance_id = imds.new_instance_id()
    _record(lab_dir, [h for h in layout.hosts if "control-plane" in h.roles],
            {"instance_id": instance_id, "name": name, "pool": pool, "zone": zone,
             "state": "running", "addresses": [host.address], "dns_names": [name],
             "account": imds.ACCOUNT})
    document = imds.document(instance_id, zone, host.address, dt.datetime.now(dt.UTC))
    answers = imds.served(document, imds.sign(lab_dir, document), name, host.address,
                          instance_id)
    if steal is not None:  # a copy of another instance's signed document, not its own
        victim = imds.read(lab_dir / "hosts" / steal / "fs")
        answers.update({k: victim[k] for k in (imds.DOCUMENT, imds.SIGNATURE)})
    imds.place(root, answers)
    inventory = load_inventory(lab_dir / "inventory.yaml")
    spec = join.JoinSpec(
        pool=pool, zone=zone, endpoint_url=inventory.zone(zone).endpoint.url,
        ca_pem=(lab_dir / "pki" / "local" / "pki" / "ca.crt").read_text(),
        kubernetes_version=inventory.cluster.kubernetes_version,
        dns_address=inventory.cluster.dns_address, dns_domain=inventory.cluster.dns_domain,
        lab=True, claim=claim, kubelet_path=str(Path(bins) / "kubelet"),
        cgroup_root=cgroups.root_for(host.netns),
        pod_network=inventory.cluster.cni == "bridge",
        cluster_cidr=inventory.cluster.pod_cidr, service_cidr=inventory.cluster.service_cidr,
        lab_images=tuple(i.archive for i in lab_images.ensure(
            k8s_bin.load(Path(bins), inventory.cluster.kubernetes_version)).values()))
    script = join.user_data(spec)
    if not boot:
        return Launched(name, instance_id, claim or name, host.address, zone, pool, script, "")
    pid = build.State.load(lab_dir).data["pids"][name]
    done = subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", "-u", "sh", "-s"],
                          input=script, capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise LaunchError(f"{name}: user data failed: {done.stderr.strip()[-500:]}")
    return Launched(name, instance_id, claim or name, host.address, zone, pool, script,
                    done.stdout)
