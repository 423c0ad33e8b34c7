"""The pod network agent's pure part: what a node's overlay should be (from the Node
objects), the parsers of the kernel's answers, and the commands that close the gap.

Apart from the program (bootstrap.node.pod_network: its executor, API reads and flags) so the
plan can be read and tested on its own: no process, no I/O, nothing but values in and out.
Shipped beside the program as one of its COMPANIONS; standard library only (python3 3.9+).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEVICE = "mzk-vxlan"
VNI, VXLAN_PORT, VXLAN_OVERHEAD = 1, 8472, 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14
TABLE = "mzk_pods"
COMMENT_PREFIX = "multizone-k8s pods "
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


# ---- desired state (pure) ------------------------------------------------------------------

@dataclass(frozen=True)
class NodeRecord:
    """What the agent needs of a Node: "" where the Node has none yet."""
    name: str
    pod_cidr: str
    address: str  # the first IPv4 InternalIP


@dataclass(frozen=True)
class Peer:
    name: str
    cidr: str
    gateway: str  # the pod CIDR's network address: the peer's VXLAN address
    address: str
    mac: str


@dataclass(frozen=True)
class Desired:
    node: str
    address: str
    cidr: str
    gateway: str
    mac: str
    cluster_cidr: str
    service_cidr: str
    peers: tuple[Peer, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (node, why it is no peer)


def record_of(node: Mapping[str, Any]) -> NodeRecord:
    addresses = [a.get("address", "") for a in (node.get("status") or {}).get("addresses") or []
                 if a.get("type") == "InternalIP"]
    return NodeRecord((node.get("metadata") or {}).get("name", ""),
                      (node.get("spec") or {}).get("podCIDR") or "",
                      next((a for a in addresses if _ipv4(a)), ""))


def records_from(node_list: Mapping[str, Any]) -> dict[str, NodeRecord]:
    records = (record_of(node) for node in node_list.get("items") or [])
    return {r.name: r for r in records if r.name}


def vxlan_mac(address: str) -> str:
    """A locally administered unicast MAC (0e: bit 1 set, bit 0 clear) from an IPv4 address,
    so every node knows every peer's MAC without asking."""
    return "0e:7a:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


def _ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def ipv4_network(text: str) -> ipaddress.IPv4Network | None:
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        return None
    return network if isinstance(network, ipaddress.IPv4Network) else None


def desired_state(node: str, records: Mapping[str, NodeRecord], cluster_cidr: str,
                  service_cidr: str) -> Desired | str:
    """The overlay this node should have, or why it cannot have one yet."""
    me, cluster = records.get(node), ipaddress.IPv4Network(cluster_cidr)
    if me is None:
        return f"node {node} is not in the node list"
    if not me.pod_cidr or not me.address:
        return f"node {node} has no {'spec.podCIDR' if not me.pod_cidr else 'IPv4 InternalIP'} yet"
    own = ipv4_network(me.pod_cidr)
    if own is None or not own.subnet_of(cluster):
        return f"node {node}'s podCIDR {me.pod_cidr} is not an IPv4 range inside {cluster_cidr}"
    peers: list[Peer] = []
    skipped: list[tuple[str, str]] = []
    taken, addresses = [own], {me.address}
    for name in sorted(records):
        record = records[name]
        if name == node or not record.pod_cidr or not record.address:
            continue
        network = ipv4_network(record.pod_cidr)
        if network is None or not network.subnet_of(cluster):
            skipped.append((name, f"podCIDR {record.pod_cidr} is not inside {cluster_cidr}"))
        elif any(network.overlaps(t) for t in taken):
            skipped.append((name, f"podCIDR {record.pod_cidr} overlaps another node's"))
        elif record.address in addresses:
            skipped.append((name, f"InternalIP {record.address} is another node's"))
        else:
            taken.append(network)
            addresses.add(record.address)
            peers.append(Peer(name, str(network), str(network.network_address),
                              record.address, vxlan_mac(record.address)))
    return Desired(node, me.address, str(own), str(own.network_address), vxlan_mac(me.address),
                   cluster_cidr, service_cidr, tuple(peers), tuple(skipped))


def nft_ruleset(cluster_cidr: str) -> bytes:
    """Masquerade what pods send outside the cluster CIDR (pod to pod keeps its source), and
    a forward chain that names pod traffic (policy accept: it changes nothing else)."""
    body = [f"table ip {TABLE} {{", "",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    ip saddr {cluster_cidr} ip daddr != {cluster_cidr} masquerade", "  }",
            "  chain forward {", "    type filter hook forward priority filter; policy accept;",
            f"    ip saddr {cluster_cidr} accept", f"    ip daddr {cluster_cidr} accept", "  }",
            "}"]
    digest = hashlib.sha256("\n".join(body).encode()).hexdigest()[:16]
    body[1] = f'  comment "{COMMENT_PREFIX}{digest}"'
    # Create (so the delete cannot fail), delete, create: one transaction under `nft -f`.
    return (f"table ip {TABLE}\ndelete table ip {TABLE}\n" + "\n".join(body) + "\n").encode()


def nft_digest(text: str) -> str:
    """The digest in a table's comment (a ruleset or `nft list table` output); "" if none."""
    found = re.search(f'comment "{COMMENT_PREFIX}([0-9a-f]+)"', text)
    return found.group(1) if found else ""


# ---- current state: parsers of the kernel's answers (pure) -----------------------------------

@dataclass(frozen=True)
class Link:
    vni: int | None  # None: a device of that name that is no VXLAN
    port: int | None
    local: str
    dev: str
    learning: bool
    mtu: int
    mac: str
    up: bool
    addresses: tuple[str, ...] = ()  # IPv4 "a.b.c.d/len"


@dataclass
class Current:
    underlay: str = ""  # the interface that holds the node's InternalIP
    underlay_mtu: int = 0
    link: Link | None = None
    routes: dict[str, str] = field(default_factory=dict)  # dst -> gateway ("" when not onlink)
    neighbours: dict[str, str] = field(default_factory=dict)  # permanent ones: dst -> MAC
    fdb: set[tuple[str, str]] = field(default_factory=set)  # (MAC, remote) entries
    nft_digest: str = ""
    ip_forward: bool = True
    service_routed: bool = True


def parse_underlay(addr_json: str, address: str) -> tuple[str, int]:
    for link in json.loads(addr_json or "[]"):
        if any(a.get("local") == address for a in link.get("addr_info") or []):
            return link.get("ifname", ""), int(link.get("mtu") or 0)
    return "", 0


def parse_link(addr_json: str) -> Link | None:
    """`ip -j -d addr show dev DEVICE`: the device and its addresses in one read."""
    links = json.loads(addr_json or "[]")
    if not links:
        return None
    link = links[0]
    info = link.get("linkinfo") or {}
    data = (info.get("info_data") or {}) if info.get("info_kind") == "vxlan" else {}
    return Link(data.get("id"), data.get("port"), data.get("local", ""), data.get("link", ""),
                bool(data.get("learning", True)), int(link.get("mtu") or 0),
                link.get("address", ""), "UP" in (link.get("flags") or []),
                tuple(sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info") or []
                             if a.get("family") == "inet")))


def _dst(text: str) -> str:
    network = ipv4_network(text)
    return str(network) if network is not None else text


def parse_routes(route_json: str) -> dict[str, str]:
    return {_dst(r.get("dst", "")): r.get("gateway", "") if "onlink" in (r.get("flags") or [])
            else "" for r in json.loads(route_json or "[]")}


def parse_neighbours(neigh_json: str) -> dict[str, str]:
    return {n["dst"]: n.get("lladdr", "") for n in json.loads(neigh_json or "[]")
            if "PERMANENT" in (n.get("state") or [])}


def parse_fdb(fdb_json: str) -> set[tuple[str, str]]:
    return {(e["mac"], e["dst"]) for e in json.loads(fdb_json or "[]") if e.get("dst")}


# ---- the gap as commands (pure) --------------------------------------------------------------

def quoted(value: str) -> str:
    """A log line's value: bare when only word characters and .:/@-, else a JSON string."""
    return value if re.fullmatch(r"[\w.:/@-]+", value) else json.dumps(value)


@dataclass
class Change:
    event: str
    fields: dict[str, str]
    argv: tuple[str, ...] = ()
    stdin: bytes | None = None
    path: str = ""  # set: write stdin to this file instead of running argv

    def line(self) -> str:
        return " ".join(f"{k}={quoted(v)}" for k, v in {"event": self.event,
                                                         **self.fields}.items())


class PlanError(Exception):
    """The host cannot carry the overlay as asked (e.g. the InternalIP is on no interface)."""


def _change(event: str, fields: dict[str, str], *argv: str) -> Change:
    return Change(event, fields, argv)


def plan(current: Current, desired: Desired) -> list[Change]:
    """The commands that turn `current` into `desired`, in an order the kernel accepts
    (device up before onlink routes; removals before replacements); [] when converged."""
    if not current.underlay:
        raise PlanError(f"InternalIP {desired.address} of node {desired.node} is on no "
                        "interface of this host")
    out: list[Change] = []
    if not current.ip_forward:
        out.append(Change("ip-forward", {"value": "1"}, stdin=b"1\n", path=IP_FORWARD))
    rules = nft_ruleset(desired.cluster_cidr)
    digest = nft_digest(rules.decode())
    if current.nft_digest != digest:
        out.append(Change("nft-load", {"table": f"ip {TABLE}", "digest": digest},
                          ("nft", "-f", "-"), rules))
    mtu, dev, addr, mac = (current.underlay_mtu - VXLAN_OVERHEAD, current.underlay,
                           desired.address, desired.mac)
    link, routes, neighbours, fdb = current.link, current.routes, current.neighbours, current.fdb
    if link is None or (link.vni, link.port, link.local, link.dev, link.learning) != (
            VNI, VXLAN_PORT, addr, dev, False):
        if link is not None:  # another VNI, port, address or underlay: only a new device
            out.append(_change("link-delete", {"dev": DEVICE}, "ip", "link", "del", DEVICE))
        out.append(_change("link-add", {"dev": DEVICE, "underlay": dev, "local": addr,
                                        "mac": mac, "mtu": str(mtu)},
                           "ip", "link", "add", DEVICE, "address", mac, "mtu", str(mtu), "type",
                           "vxlan", "id", str(VNI), "dstport", str(VXLAN_PORT), "local", addr,
                           "nolearning", "dev", dev))
        link = Link(VNI, VXLAN_PORT, addr, dev, False, mtu, mac, False)
        routes, neighbours, fdb = {}, {}, set()
    if (link.mac, link.mtu) != (mac, mtu):
        out.append(_change("link-set", {"dev": DEVICE, "mac": mac, "mtu": str(mtu)},
                           "ip", "link", "set", "dev", DEVICE, "address", mac, "mtu", str(mtu)))
    own = f"{desired.gateway}/32"
    out += [_change("address-del", {"address": a}, "ip", "addr", "del", a, "dev", DEVICE)
            for a in link.addresses if a != own]
    if own not in link.addresses:
        out.append(_change("address-add", {"address": own}, "ip", "addr", "add", own, "dev",
                           DEVICE))
    if not link.up:
        out.append(_change("link-up", {"dev": DEVICE}, "ip", "link", "set", "dev", DEVICE, "up"))
    want_routes = {p.cidr: p.gateway for p in desired.peers}
    want_neighbours = {p.gateway: p.mac for p in desired.peers}
    want_fdb = {(p.mac, p.address) for p in desired.peers}
    out += [_change("route-del", {"cidr": d}, "ip", "route", "del", d, "dev", DEVICE)
            for d in sorted(set(routes) - set(want_routes))]
    out += [_change("neigh-del", {"address": d}, "ip", "neigh", "del", d, "dev", DEVICE)
            for d in sorted(set(neighbours) - set(want_neighbours))]
    out += [_change("fdb-del", {"mac": m, "dst": r}, "bridge", "fdb", "del", m, "dev", DEVICE,
                    "dst", r, "self") for m, r in sorted(fdb - want_fdb)]
    for p in desired.peers:  # bridge, then ip: the executor batches each tool's run
        if (p.mac, p.address) not in fdb:
            out.append(_change("fdb-add", {"node": p.name, "mac": p.mac, "dst": p.address},
                               "bridge", "fdb", "replace", p.mac, "dev", DEVICE, "dst",
                               p.address, "self", "permanent"))
    for p in desired.peers:
        if neighbours.get(p.gateway) != p.mac:
            out.append(_change("neigh-add", {"node": p.name, "address": p.gateway, "mac": p.mac},
                               "ip", "neigh", "replace", p.gateway, "lladdr", p.mac, "dev",
                               DEVICE, "nud", "permanent"))
        if routes.get(p.cidr) != p.gateway:
            out.append(_change("route-add", {"node": p.name, "cidr": p.cidr, "via": p.gateway},
                               "ip", "route", "replace", p.cidr, "via", p.gateway, "dev",
                               DEVICE, "onlink"))
    if not current.service_routed:  # hosts without a default route (the lab's)
        out.append(_change("service-route", {"cidr": desired.service_cidr, "dev": dev},
                           "ip", "route", "replace", desired.service_cidr, "dev", dev))
    return out
