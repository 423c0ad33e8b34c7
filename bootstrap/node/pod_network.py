#!/usr/bin/env python3
"""mzk-pod-network: routes between the pod CIDRs of all nodes, over a kernel VXLAN overlay.

Each node's pods sit on its bridge (bootstrap.node.cni) in the /24 the controller-manager
gave the node. Nodes of different zones are in different subnets, so plain routes to each
other's pod CIDRs would need the network's help (VPC route tables cap far below 5,000
entries); VXLAN carries pod packets in UDP between the nodes' own addresses, which any
underlay routes. No learning and no multicast: for each peer Node the agent writes one
forwarding entry (its VXLAN MAC -> its InternalIP), one permanent neighbour (its pod
CIDR's network address -> that MAC) and one route (its pod CIDR via that address, onlink),
so a packet never floods and 5,000 nodes cost 15,000 kernel entries per node. The MAC is
derived from the InternalIP, so no node publishes anything: Node objects (spec.podCIDR,
status.addresses) are all it reads, with the kubelet's credential, by one list and then a
watch; the Node authorizer (1.34+) lets a node read only its own Node, so the cluster needs
bootstrap.addons.pod_network (get/list/watch Nodes for the group system:nodes).

Pods keep their addresses between nodes; traffic leaving the cluster CIDR is masqueraded
(nftables table `ip mzk_pods`, its digest in its comment, replaced in one transaction).

Each pass reads the kernel's state and runs only the commands that close the gap (a
converged node runs reads only), logging one key=value line per change; the plan is pure
(desired_state, plan) and the executor apart. API errors keep the kernel state as it is.

Shipped to the nodes with its companions (COMPANIONS, each beside it as `<name>.py`) and run
by their python3 (3.9+): standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import itertools
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NoReturn

try:  # in the project
    from bootstrap.node.kube_api import MAX_BACKOFF, ApiUnavailable, KubeApi, ListWatch
except ImportError:  # on a host: shipped beside this program
    from kube_api import MAX_BACKOFF, ApiUnavailable, KubeApi, ListWatch  # type: ignore[no-redef]

# The modules shipped beside this program (bootstrap/node/<name>.py as <name>.py).
COMPANIONS = ("kube_api",)
PROGRAM = "mzk-pod-network"
DEVICE = "mzk-vxlan"
VNI, VXLAN_PORT, VXLAN_OVERHEAD = 1, 8472, 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14
TABLE = "mzk_pods"
COMMENT_PREFIX = "multizone-k8s pods "
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
NODES_PATH = "/api/v1/nodes"

Runner = Callable[[list[str], "bytes | None"], "tuple[int, str, str]"]


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


def _network(text: str) -> ipaddress.IPv4Network | None:
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
    own = _network(me.pod_cidr)
    if own is None or not own.subnet_of(cluster):
        return f"node {node}'s podCIDR {me.pod_cidr} is not an IPv4 range inside {cluster_cidr}"
    peers: list[Peer] = []
    skipped: list[tuple[str, str]] = []
    taken, addresses = [own], {me.address}
    for name in sorted(records):
        record = records[name]
        if name == node or not record.pod_cidr or not record.address:
            continue
        network = _network(record.pod_cidr)
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
    network = _network(text)
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

@dataclass
class Change:
    event: str
    fields: dict[str, str]
    argv: tuple[str, ...] = ()
    stdin: bytes | None = None
    path: str = ""  # set: write stdin to this file instead of running argv

    def line(self) -> str:
        return " ".join(f"{k}={_quoted(v)}" for k, v in {"event": self.event,
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


# ---- the executor --------------------------------------------------------------------------

def run_command(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(
        errors="replace")


def read_current(desired: Desired, run: Runner = run_command) -> Current:
    """The kernel's state as far as the overlay goes: reads only."""
    def read(*argv: str, missing_ok: bool = False) -> str:
        code, out, err = run(list(argv), None)
        if code != 0 and not missing_ok:
            raise PlanError(f"{' '.join(argv)}: {err.strip() or f'exit {code}'}")
        return out if code == 0 else ""

    current = Current()
    current.underlay, current.underlay_mtu = parse_underlay(read("ip", "-j", "-4", "addr", "show"),
                                                            desired.address)
    current.link = parse_link(read("ip", "-j", "-d", "addr", "show", "dev", DEVICE,
                                   missing_ok=True))
    if current.link is not None:
        current.routes = parse_routes(read("ip", "-j", "route", "show", "dev", DEVICE))
        current.neighbours = parse_neighbours(read("ip", "-j", "neigh", "show", "dev", DEVICE))
        current.fdb = parse_fdb(read("bridge", "-j", "fdb", "show", "dev", DEVICE))
    current.nft_digest = nft_digest(read("nft", "list", "table", "ip", TABLE, missing_ok=True))
    with open(IP_FORWARD, encoding="ascii") as handle:
        current.ip_forward = handle.read().strip() != "0"
    first = ipaddress.IPv4Network(desired.service_cidr).network_address + 1
    current.service_routed = run(["ip", "-j", "route", "get", str(first)], None)[0] == 0
    return current


BATCHED = {"ip route", "ip neigh", "bridge fdb"}  # entries: many per pass on a big cluster


def _one(change: Change, run: Runner) -> tuple[int, str]:
    if not change.path:
        code, _, err = run(list(change.argv), change.stdin)
        return code, err
    try:
        with open(change.path, "wb") as handle:
            handle.write(change.stdin or b"")
    except OSError as err:
        return 1, str(err)
    return 0, ""


def execute(changes: list[Change], run: Runner = run_command,
            log: Callable[[str], None] = print) -> bool:
    """Run the changes in order, logging each one done; False when any failed. A run of
    entry changes of one tool is one `-batch` process (5,000 peers: two processes); a device
    or table change that fails ends the pass (what follows depends on it)."""
    ok = True
    for tool, grouped in itertools.groupby(changes, key=lambda c: c.argv[0] if " ".join(
            c.argv[:2]) in BATCHED else ""):
        group = list(grouped)
        if not tool:
            for change in group:
                code, err = _one(change, run)
                log(change.line() + (f" result=failed error={_quoted(_brief(err))}" if code
                                     else ""))
                if code:
                    return False
            continue
        batch = "".join(" ".join(c.argv[1:]) + "\n" for c in group).encode()
        code, _, err = run([tool, "-force", "-batch", "-"], batch)
        failed = {int(n) - 1 for n in re.findall(r"Command failed -:(\d+)", err)}
        failed = failed or (set(range(len(group))) if code else set())
        for number, change in enumerate(group):
            log(change.line() + (f" result=failed error={_quoted(_brief(err))}"
                                 if number in failed else ""))
        ok = ok and not failed
    return ok


def _brief(text: str) -> str:
    return " ".join(text.split())[:300]


# ---- where Nodes come from -----------------------------------------------------------------

def read_nodes_file(path: str) -> dict[str, NodeRecord]:
    with open(path, encoding="utf-8") as handle:
        return records_from(json.load(handle))


# ---- the program ---------------------------------------------------------------------------

def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _quoted(value: str) -> str:
    return value if re.fullmatch(r"[\w.:/@-]+", value) else json.dumps(value)


@dataclass
class Agent:
    node: str
    cluster_cidr: str
    service_cidr: str
    status_path: str = ""
    run: Runner = run_command
    peers: int = 0
    waiting: str = ""  # why this node has no overlay yet
    told: set[str] = field(default_factory=set)  # lines logged once

    def reconcile(self, records: Mapping[str, NodeRecord]) -> bool:
        """One pass against `records`; False when a read or a command failed."""
        desired = desired_state(self.node, records, self.cluster_cidr, self.service_cidr)
        self.waiting = desired if isinstance(desired, str) else ""
        if isinstance(desired, str):
            self._once(f"event=waiting node={self.node} reason={_quoted(desired)}")
            return True
        for name, why in desired.skipped:
            self._once(f"event=peer-skipped node={name} reason={_quoted(why)}")
        self.peers = len(desired.peers)
        try:
            changes = plan(read_current(desired, self.run), desired)
        except (PlanError, OSError, ValueError, subprocess.SubprocessError) as err:
            log(f"event=error node={self.node} error={_quoted(str(err))}")
            return False
        return execute(changes, self.run, log)

    def _once(self, line: str) -> None:
        if line not in self.told:
            self.told.add(line)
            log(line)

    def write_status(self, ok: bool, error: str) -> None:
        """Atomically (temp + rename), so a reader never sees half a file."""
        if not self.status_path:
            return
        state = {"node": self.node, "peers": self.peers, "last_pass_ok": ok,
                 "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),  # noqa: UP017
                 "waiting": self.waiting, "error": error}
        temporary = f"{self.status_path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.status_path) or ".", exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(state, handle)
            os.replace(temporary, self.status_path)
        except OSError as err:
            log(f"event=error status={self.status_path} error={_quoted(str(err))}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        print(f"{PROGRAM}: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog=PROGRAM, description="Route pod CIDRs between nodes over VXLAN.")
    for flag in ("--server", "--ca", "--cert", "--key"):
        parser.add_argument(flag, default="")
    for flag in ("--node", "--cluster-cidr", "--service-cidr"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between passes")
    parser.add_argument("--status", default="", help="write the pass's status (JSON) here")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--nodes-file", default="", help="a JSON NodeList instead of the API")
    args = parser.parse_args(argv)
    missing = [f"--{f}" for f in ("server", "ca", "cert", "key") if not getattr(args, f)]
    if missing and not args.nodes_file:
        parser.error(f"{', '.join(missing)} missing: give the API server and the kubelet's "
                     "credential (or --nodes-file PATH)")
    for flag, value in (("--cluster-cidr", args.cluster_cidr),
                        ("--service-cidr", args.service_cidr)):
        if _network(value) is None:
            parser.error(f"{flag} {value!r} must be an IPv4 network such as 10.244.0.0/16")
    if not args.node.strip():
        parser.error("--node must name this node (its Node object's name)")
    if not args.interval > 0:
        parser.error(f"--interval {args.interval} must be more than 0 seconds")
    return args


def open_cache(args: argparse.Namespace, agent: Agent) -> ListWatch:
    """The Node cache on the kubelet's credential. A service waits for a credential file that
    is not there yet (an auto-scaled node's, until TLS bootstrapping); --once does not."""
    while True:
        try:
            return ListWatch(KubeApi(args.server, args.ca, args.cert, args.key), NODES_PATH,
                             record_of, log)
        except FileNotFoundError as err:
            if args.once:
                raise
            agent.waiting = f"credential {err.filename} is not there yet"
            agent._once(f"event=waiting node={agent.node} reason={_quoted(agent.waiting)}")
            agent.write_status(False, "")
            time.sleep(args.interval)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    agent = Agent(args.node, args.cluster_cidr, args.service_cidr, args.status)
    cache: ListWatch | None = None
    if not args.nodes_file:
        try:
            cache = open_cache(args, agent)
        except (ValueError, OSError, ssl.SSLError) as err:
            print(f"{PROGRAM}: {err}", file=sys.stderr)
            return 2
        if not args.once:
            cache.start()
    backoff = 0.0
    while True:  # ended by SIGTERM (systemd) or --once
        if cache is not None:
            cache.changed.clear()
        records: dict[str, NodeRecord] | None
        try:
            if cache is None:
                records, error = read_nodes_file(args.nodes_file), ""
            elif args.once:
                records, error = cache.list_all()[0], ""
            else:
                records, error = cache.snapshot()
                error = error or ("" if records is not None else "no node list yet")
        except (ApiUnavailable, OSError, ValueError) as err:
            records, error = None, str(err)
            log(f"event=nodes-error error={_quoted(error)}")
        # Against the last good records even while the API fails: the state is kept.
        ok = records is not None and agent.reconcile(records) and not error
        agent.write_status(ok, error or ("" if ok else "the pass failed (see the log)"))
        if args.once:
            return 0 if ok else 1
        backoff = 0.0 if ok else min(max(2 * backoff, args.interval), MAX_BACKOFF)
        if backoff or cache is None:
            time.sleep(backoff or args.interval)
        else:
            cache.changed.wait(args.interval)


if __name__ == "__main__":
    sys.exit(main())
