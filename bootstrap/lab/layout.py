"""The lab's shape as plain data: names, namespaces and addresses (no side effects).

    root namespace --veth mzk<hash>/eth0 (10.213.250.<4j>/30)--> bastion
    bastion eth1 10.213.0.10/24 --> router (10.213.0.1), which bridges each zone:
        lab-a 10.213.1.0/24 (br-a, .1)   cp-a .10, node-1 .20, node-4 .21, ...
        lab-b 10.213.2.0/24 (br-b, .1)   cp-b .10, node-2 .20, ...
        lab-c 10.213.3.0/24 (br-c, .1)   cp-c .10, node-3 .20, ...

The root namespace routes only the /30 link to the bastion, never the zones: like private
subnets behind a bastion. Every namespace name starts with `mzk-<hash>-`, the hash taken
from the lab directory, so two labs never collide and `down` finds its own by prefix.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

LAB_NET = ipaddress.ip_network("10.213.0.0/16")
BASTION_NET = ipaddress.ip_network("10.213.0.0/24")  # router .1, bastion .10
LINK_BASE = ipaddress.ip_address("10.213.250.0")  # /30 links root <-> bastion
LINK_SLOTS = 64
ZONES = ("lab-a", "lab-b", "lab-c")
# Directories the bootstrap writes; each host gets its own copy, bind-mounted in place.
# /root too: a clean home per host (the machine's own shell start-up files stay out).
# /run, /var/lib and /var/log whole: a node's runtime and kubelet write all over them, and a
# private mount over a directory that another process deletes silently disappears.
HOST_DIRS = ("/etc/kubernetes", "/etc/systemd/system", "/etc/mzk", "/etc/containerd",
             "/etc/cni", "/etc/sysctl.d", "/run", "/var/lib", "/var/log", "/root")
# Kernel settings the kubelet insists on (protectKernelDefaults) are not per namespace: each
# host gets its own copy of these files, mounted over /proc/sys, so nothing of this machine's
# changes. They start with this machine's values; the bootstrap sets them as on a real host.
SHADOWED_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                    "kernel/panic_on_oops")
ENDPOINT_INDEX = 5  # each zone's load balancer frontend: 10.213.<zone>.5; regional 10.213.0.5
DOMAIN = "lab.internal"


@dataclass(frozen=True)
class LabHost:
    name: str
    zone: str
    roles: tuple[str, ...]
    address: str
    gateway: str
    netns: str
    router_if: str  # the router's end of the host's veth, enslaved to the zone bridge
    bridge: str

    def home(self, lab_dir: Path) -> Path:
        return lab_dir / "hosts" / self.name


@dataclass(frozen=True)
class Layout:
    dir: Path
    prefix: str
    router_ns: str
    bastion_ns: str
    root_if: str
    link_slot: int
    hosts: tuple[LabHost, ...]

    @property
    def root_address(self) -> str:
        return str(LINK_BASE + 4 * self.link_slot + 1)

    @property
    def bastion_address(self) -> str:
        """The bastion's address as seen from the machine: the only one it can reach."""
        return str(LINK_BASE + 4 * self.link_slot + 2)

    @property
    def bastion_inner(self) -> str:
        return str(BASTION_NET[10])

    @property
    def router_inner(self) -> str:
        return str(BASTION_NET[1])

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.router_ns, self.bastion_ns, *(h.netns for h in self.hosts))

    def zone_net(self, zone: str) -> ipaddress.IPv4Network:
        return zone_subnet(ZONES.index(zone))

    def zone_endpoint(self, zone: str) -> str:
        """The zone's API load balancer frontend (haproxy in the router namespace)."""
        return str(self.zone_net(zone)[ENDPOINT_INDEX])

    @property
    def regional_endpoint(self) -> str:
        return str(BASTION_NET[ENDPOINT_INDEX])

    def endpoint_names(self) -> dict[str, str]:
        """DNS name -> address of every endpoint (each lab host's /etc/hosts lists them)."""
        names = {f"api.{DOMAIN}": self.regional_endpoint}
        names.update({f"api-{z[-1]}.{DOMAIN}": self.zone_endpoint(z) for z in ZONES})
        return names

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)


def zone_subnet(index: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.213.{index + 1}.0/24")


def lab_hash(lab_dir: Path) -> str:
    return hashlib.sha256(str(lab_dir.resolve()).encode()).hexdigest()[:6]


def plan(lab_dir: Path, workers: int = 3, link_slot: int | None = None) -> Layout:
    """The layout for a lab directory: one control-plane host per zone, workers round-robin.

    `link_slot` picks the root<->bastion /30; by default it follows from the hash (the
    builder moves it when that link network is taken on this machine).
    """
    if not 0 <= workers <= 3 * 200:
        raise ValueError(f"{workers} workers: use 0..600")
    lab_dir = lab_dir.resolve()
    digest = lab_hash(lab_dir)
    prefix = f"mzk-{digest}"
    hosts: list[LabHost] = []
    for index, zone in enumerate(ZONES):
        net = zone_subnet(index)
        hosts.append(LabHost(f"cp-{zone[-1]}", zone, ("control-plane", "etcd"), str(net[10]),
                             str(net[1]), f"{prefix}-cp-{zone[-1]}", f"h{len(hosts)}",
                             f"br-{zone[-1]}"))
    for n in range(1, workers + 1):
        index = (n - 1) % len(ZONES)
        zone, net = ZONES[index], zone_subnet(index)
        hosts.append(LabHost(f"node-{n}", zone, ("node",), str(net[20 + (n - 1) // 3]),
                             str(net[1]), f"{prefix}-node-{n}", f"h{len(hosts)}",
                             f"br-{zone[-1]}"))
    slot = int(digest, 16) % LINK_SLOTS if link_slot is None else link_slot
    return Layout(dir=lab_dir, prefix=prefix, router_ns=f"{prefix}-router",
                  bastion_ns=f"{prefix}-bastion", root_if=f"mzk{digest}", link_slot=slot,
                  hosts=tuple(hosts))


def hosts_file(layout: Layout, host: LabHost) -> str:
    """A lab host's /etc/hosts: the endpoints' names (real clusters get them from DNS)."""
    lines = ["127.0.0.1 localhost", f"{host.address} {host.name}"]
    lines += [f"{address} {name}" for name, address in layout.endpoint_names().items()]
    return "\n".join(lines) + "\n"


def inventory_data(layout: Layout, host_keys: dict[str, str], private_key: Path,
                   kubernetes_version: str, etcd_volumes: dict[str, str] | None = None) -> dict:
    """The inventory the lab hands to `bootstrap apply` (plain data for YAML).

    Endpoints are the lab's load balancers (`bootstrap.lab.balancers`): one per zone,
    inside the zone, and a regional one. `etcd_volumes`: host -> loop device.
    """
    volumes = etcd_volumes or {}
    return {
        "cluster": {"name": "mzk-lab", "kubernetes_version": kubernetes_version,
                    "service_cidr": "10.96.0.0/12", "pod_cidr": "10.244.0.0/16",
                    "dns_domain": "cluster.local", "api_port": 6443, "egress": "konnectivity"},
        "endpoints": {
            "regional": {"name": f"api.{DOMAIN}", "address": layout.regional_endpoint},
            "zones": {z: {"name": f"api-{z[-1]}.{DOMAIN}", "address": layout.zone_endpoint(z)}
                      for z in ZONES},
            # haproxy checks every 300 ms and one failure marks a server down.
            "drain_seconds": 1,
        },
        "zones": [{"name": z, "subnets": [str(zone_subnet(i))]} for i, z in enumerate(ZONES)],
        "hosts": [{"name": h.name, "zone": h.zone, "roles": list(h.roles),
                   "address": h.address, "host_key": host_keys[h.name],
                   **({"etcd_volume": volumes[h.name]} if h.name in volumes else {})}
                  for h in layout.hosts],
        "ssh": {"user": "root", "private_key": str(private_key),
                "authorized_keys": [" ".join(Path(f"{private_key}.pub").read_text()
                                             .split()[:2])],
                "bastion": {"name": "bastion", "address": layout.bastion_address,
                            "host_key": host_keys["bastion"]},
                "connect_timeout": 5, "command_timeout": 120, "retries": 3, "parallel": 32},
        "pki": {"key_type": "ecdsa"},
        # The lab's auto-scaled nodes (bootstrap.lab.launch) join these pools.
        "node_pools": [{"name": f"pool-{z[-1]}", "zone": z} for z in ZONES],
    }
