"""The lab's auto scaling: launch a node that is in no inventory and joins by itself.

What EC2 and an auto scaling group do for a real pool, done on this machine: a new host
(namespace, address in its zone, sshd as on every lab host, the lab's supervisor as the
"image" carries systemd), an entry in the lab's instance record (what the approver checks
instead of the EC2 API; every control-plane host holds a copy, as every one can call EC2),
then the pool's user data (bootstrap.node.join) run as root inside the host, as cloud-init
would, with the pool's current join token. The bootstrap never logs in to it.

`claim` runs the user data under another node's name: an impostor holding the token.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bootstrap.errors import ConfigError, MultizoneError
from bootstrap.inventory import load as load_inventory
from bootstrap.k8s_bin import resolve_dir
from bootstrap.lab import build, cgroups
from bootstrap.lab.layout import ZONES, LabHost, plan, zone_subnet
from bootstrap.lab.resize import add_hosts
from bootstrap.node import join, join_tokens
from bootstrap.pki import files
from bootstrap.services import SUPERVISOR_PATH, SUPERVISOR_SOURCE
from bootstrap.steps.node_join import LAB_RECORD

FIRST_INDEX = 100  # launched hosts take .100 and up in their zone's subnet


class LaunchError(MultizoneError):
    """The lab could not launch a node."""


@dataclass(frozen=True)
class Launched:
    name: str  # the instance's own name, as the record lists it
    claimed: str  # the name its kubelet asks for
    address: str
    zone: str
    pool: str
    user_data_output: str


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
        record["instances"] = [i for i in record["instances"] if i["name"] != entry["name"]]
        record["instances"].append(entry)
        files.write(path, (json.dumps(record, indent=1) + "\n").encode(), 0o644)


def launch(lab_dir: Path, zone: str, claim: str | None = None) -> Launched:
    """Launch one node in `zone`'s pool; returns once its user data ran (the kubelet then
    joins on its own, if the control plane lets it)."""
    if zone not in ZONES:
        raise ConfigError(f"--zone {zone!r}: use one of {', '.join(ZONES)}")
    if claim is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", claim):
        raise ConfigError(f"--claim {claim!r}: give a node name (a DNS label, e.g. node-1)")
    lab_dir = lab_dir.resolve()
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
    supervisor = host.home(lab_dir) / "fs" / SUPERVISOR_PATH.lstrip("/")
    files.write(supervisor, SUPERVISOR_SOURCE, 0o755)
    _record(lab_dir, [h for h in layout.hosts if "control-plane" in h.roles],
            {"name": name, "pool": pool, "zone": zone, "state": "running",
             "addresses": [host.address], "dns_names": []})
    inventory = load_inventory(lab_dir / "inventory.yaml")
    token = join_tokens.load(lab_dir / "pki").get(pool)
    if token is None:
        raise LaunchError(f"node pool {pool} has no join token yet: run apply first")
    bins = resolve_dir(None)
    if bins is None:
        raise LaunchError("set MZK_K8S_BIN_DIR: the lab's nodes run its kubelet")
    spec = join.JoinSpec(
        pool=pool, zone=zone, endpoint_url=inventory.zone(zone).endpoint.url,
        ca_pem=(lab_dir / "pki" / "local" / "pki" / "ca.crt").read_text(),
        token=token.value, kubernetes_version=inventory.cluster.kubernetes_version,
        dns_address=inventory.cluster.dns_address, dns_domain=inventory.cluster.dns_domain,
        lab=True, node_name=claim or name, node_address=host.address,
        kubelet_path=str(Path(bins) / "kubelet"), cgroup_root=cgroups.root_for(host.netns))
    pid = build.State.load(lab_dir).data["pids"][name]
    done = subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", "-u", "sh", "-s"],
                          input=join.user_data(spec), capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise LaunchError(f"{name}: user data failed: {done.stderr.strip()[-500:]}")
    return Launched(name, claim or name, host.address, zone, pool, done.stdout)
