"""The inventory: the plain-data description of one cluster.

The Pulumi program writes it, the local lab writes it, a person can write it by hand; the
bootstrap reads nothing else. Loading turns YAML into frozen dataclasses and checks every
field, so that a mistake is one line naming the field and the fix (a `ConfigError`) before
any host is touched.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap import rules, safe_yaml
from bootstrap.addons.dns_scale import DnsRule
from bootstrap.errors import ConfigError
from bootstrap.inventory_reader import Reader as _Reader
from bootstrap.rules import (  # noqa: F401 - PKISettings and PKI_DEFAULTS are used from here
    CNI_CHOICES,
    EGRESS_MODES,
    KEY_TYPES,
    PKI_DEFAULTS,
    PKI_FIELDS,
    PKISettings,
)
from bootstrap.trust_pem import trust_pem

ROLES = ("control-plane", "etcd", "node")
HOST_KEY_TYPES = rules.SSH_KEY_TYPES
MAX_NODES = 5000  # seed 004: at most 5,000 nodes
_HOST_KEY_HINT = "paste the host's public key as '<type> <base64>' (e.g. from ssh-keyscan)"
_PRIVATE_KEY_HINT = "give the path of the operator's private key, e.g. ~/.ssh/id_ed25519"


@dataclass(frozen=True)
class Endpoint:
    """An API server address: a load balancer (regional or zonal) with its name and address."""

    name: str
    address: str | None
    port: int

    @property
    def url(self) -> str:
        return f"https://{self.name}:{self.port}"


@dataclass(frozen=True)
class Zone:
    name: str
    subnets: tuple[str, ...]
    endpoint: Endpoint


@dataclass(frozen=True)
class Host:
    name: str
    zone: str
    roles: tuple[str, ...]
    address: str
    ssh_port: int
    host_key: str
    advertise_address: str
    # The volume that holds etcd's data: an EBS volume ID (vol-...) or a device path.
    etcd_volume: str | None = None

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class Bastion:
    name: str
    address: str
    ssh_port: int
    host_key: str


@dataclass(frozen=True)
class SSHSettings:
    user: str
    private_key: str
    bastion: Bastion | None
    connect_timeout: float
    command_timeout: float
    retries: int
    parallel: int
    # Operator keys every host's `ssh.user` accepts (besides the one this run logs in with,
    # which is always kept, so that a rotation never locks the tool out); none: left alone.
    authorized_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cluster:
    name: str
    kubernetes_version: str
    service_cidr: str
    pod_cidr: str
    dns_domain: str
    api_port: int
    egress: str
    max_nodes: int  # the scale the control plane is sized for (in-flight request limits)
    # Node ports besides the kubelet's that the API server's proxy may reach through an SSH
    # tunnel (a tunnel key may forward to nothing else); Konnectivity agents are not limited.
    egress_node_ports: tuple[int, ...] = ()
    # The pod network: `bridge` (ours, bootstrap.node.cni) or `external` (the cluster brings
    # its own network plugin; nodes stay NotReady until it is installed).
    cni: str = "bridge"
    # PEM certificates or public keys whose signatures on instance identity documents the
    # CSR approver accepts (the lab's "cloud" key); none: AWS's certificate for the region.
    instance_identity_trust: str | None = None
    # CoreDNS's replicas and memory as the cluster grows (bootstrap.addons.dns_scale).
    dns: DnsRule = field(default_factory=DnsRule)

    @property
    def kubernetes_service_ip(self) -> str:
        """First address of the service CIDR: the ClusterIP of the `kubernetes` service."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    @property
    def dns_address(self) -> str:
        """The cluster DNS service's ClusterIP (the tenth address, as kubeadm chooses)."""
        return str(ipaddress.ip_network(self.service_cidr)[10])


@dataclass(frozen=True)
class NodePool:
    """Auto-scaled nodes of one zone: they join by their instance identity (bootstrap.node.join)."""

    name: str
    zone: str


@dataclass(frozen=True)
class Inventory:
    cluster: Cluster
    regional_endpoint: Endpoint
    zones: tuple[Zone, ...]
    hosts: tuple[Host, ...]
    ssh: SSHSettings
    pki: PKISettings
    # How long a load balancer takes to stop sending new connections to an API server
    # whose port refuses them (its health checks' interval x unhealthy threshold, plus a
    # margin): an API server is drained that long before it restarts.
    drain_seconds: float = 30.0
    node_pools: tuple[NodePool, ...] = ()
    source: str = field(default="<memory>", compare=False)

    @functools.cached_property
    def _zones_by_name(self) -> dict[str, Zone]:
        return {z.name: z for z in self.zones}

    @functools.cached_property
    def _hosts_by_name(self) -> dict[str, Host]:
        return {h.name: h for h in self.hosts}

    def zone(self, name: str) -> Zone:
        return self._zones_by_name[name]

    def host(self, name: str) -> Host:
        return self._hosts_by_name[name]

    def with_role(self, role: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.has(role))

    @property
    def control_plane(self) -> tuple[Host, ...]:
        return self.with_role("control-plane")

    @property
    def etcd_members(self) -> tuple[Host, ...]:
        return self.with_role("etcd")

    @property
    def nodes(self) -> tuple[Host, ...]:
        return self.with_role("node")

    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every load balancer: the regional one first, then one per zone."""
        return (self.regional_endpoint, *(z.endpoint for z in self.zones))


# --------------------------------------------------------------------------- loading


def load(path: str | Path) -> Inventory:
    """Read and validate an inventory file; every problem is a one-line `ConfigError`.
    The YAML is read by `bootstrap.safe_yaml`: bounded, UTF-8, no duplicate keys."""
    data = safe_yaml.load(path, what="the inventory",
                          fix="give the path of an inventory YAML file")
    return parse(data, source=str(path))


def parse(data: Any, source: str = "<memory>") -> Inventory:
    """Validate plain data (as loaded from YAML or built by the Pulumi program)."""
    r = _Reader(source)
    top = r.mapping(data, "", required=("cluster", "endpoints", "zones", "hosts", "ssh"),
                    optional=("pki", "node_pools"))
    cluster = _cluster(r, top["cluster"])
    endpoints = r.mapping(top["endpoints"], "endpoints", required=("regional", "zones"),
                          optional=("drain_seconds",))
    regional = _endpoint(r, endpoints["regional"], "endpoints.regional", cluster.api_port)
    zonal_raw = r.mapping(endpoints["zones"], "endpoints.zones", optional=None)
    zones = _zones(r, top["zones"], zonal_raw, cluster)
    hosts = _hosts(r, top["hosts"], zones, cluster)
    ssh = _ssh(r, top["ssh"], hosts)
    pki = _pki(r, top["pki"] if "pki" in top else {})  # written: must be a mapping
    _check_topology(r, zones, hosts)
    for problem in cluster.dns.validate(len(zones))[:1]:
        field, _, message = problem.partition(": ")
        raise r.fail(field, message)
    if cluster.egress == "ssh-tunnel" and not ssh.authorized_keys:
        raise r.fail("ssh.authorized_keys", "cluster.egress ssh-tunnel adds the control "
                     "plane's tunnel keys to the nodes' authorized_keys, which the bootstrap "
                     "then manages: list the operator public keys to keep there")
    if cluster.max_nodes == 0:
        cluster = dataclasses.replace(cluster, max_nodes=max(1, sum(h.has("node")
                                                                    for h in hosts)))
    drain = r.number(endpoints.get("drain_seconds", 30), "endpoints.drain_seconds", 0, 600)
    pools = () if top.get("node_pools") in (None, []) else _node_pools(r, top["node_pools"],
                                                                        zones)
    return Inventory(cluster=cluster, regional_endpoint=regional, zones=zones, hosts=hosts,
                     ssh=ssh, pki=pki, drain_seconds=drain, node_pools=pools, source=source)


def _node_pools(r: _Reader, raw: Any, zones: tuple[Zone, ...]) -> tuple[NodePool, ...]:
    names = {z.name for z in zones}

    def one(item: Any, where: str) -> NodePool:
        if isinstance(item, dict) and "join_token_hours" in item:
            raise r.fail(f"{where}.join_token_hours", "no longer used: nodes join by their "
                         "cloud-signed instance identity, with no token; remove it")
        p = r.mapping(item, where, required=("name", "zone"))
        name = r.check(rules.dns_label, p["name"], f"{where}.name",
                       "a DNS label naming the pool, e.g. nodes-eu-west-1a")
        if not isinstance(p["zone"], str) or p["zone"] not in names:
            raise r.fail(f"{where}.zone", f"{p['zone']!r} is not one of the zones "
                         f"({', '.join(sorted(names))}); use one of them")
        return NodePool(name=name, zone=p["zone"])

    pools = tuple(r.items(raw, "node_pools", one))
    seen: set[str] = set()
    for i, pool in enumerate(pools):
        if pool.name in seen:
            raise r.fail(f"node_pools[{i}].name", f"{pool.name!r} is listed twice; give each "
                         "pool its own name")
        seen.add(pool.name)
    return pools


def _cluster(r: _Reader, raw: Any) -> Cluster:
    c = r.mapping(raw, "cluster", required=("name", "kubernetes_version"),
                  optional=("service_cidr", "pod_cidr", "dns_domain", "api_port", "egress",
                            "max_nodes", "egress_node_ports", "cni",
                            "instance_identity_trust", "dns"))
    name = r.check(rules.dns_label, c["name"], "cluster.name")
    # Any release >= 1.28 here: the lab brings its own binaries; real hosts need a pinned
    # one, which `apply` checks (apply_command.local_binaries) and the stack settings demand.
    version = r.check(rules.kubernetes_version, c["kubernetes_version"],
                      "cluster.kubernetes_version", pinned=False)
    service = r.cidr(c.get("service_cidr", "10.96.0.0/12"), "cluster.service_cidr")
    pod = r.cidr(c.get("pod_cidr", "10.244.0.0/16"), "cluster.pod_cidr")
    r.check(rules.service_and_pod, service, pod, "cluster.service_cidr", "cluster.pod_cidr")
    domain = r.check(rules.dns_name, c.get("dns_domain", "cluster.local"), "cluster.dns_domain",
                     "cluster.local", what="DNS domain")
    return Cluster(
        name=name, kubernetes_version=version, service_cidr=str(service), pod_cidr=str(pod),
        dns_domain=domain,
        api_port=r.integer(c.get("api_port", 6443), "cluster.api_port", 1, 65535),
        egress=r.choice(c.get("egress", "konnectivity"), "cluster.egress", EGRESS_MODES),
        # 0 until the hosts are read: then the number of nodes in the inventory.
        max_nodes=r.integer(c.get("max_nodes", 0), "cluster.max_nodes", 0, MAX_NODES),
        egress_node_ports=() if "egress_node_ports" not in c else tuple(sorted(set(r.items(
            c["egress_node_ports"], "cluster.egress_node_ports",
            lambda v, where: r.integer(v, where, 1, 65535))))),
        cni=r.choice(c.get("cni", "bridge"), "cluster.cni", CNI_CHOICES),
        instance_identity_trust=None if c.get("instance_identity_trust") is None else r.check(
            trust_pem, c["instance_identity_trust"], "cluster.instance_identity_trust"),
        dns=_dns_rule(r, c.get("dns")),
    )


def _dns_rule(r: _Reader, raw: Any) -> DnsRule:
    """`cluster.dns`: the CoreDNS scaling rule (checked against the zones in `parse`)."""
    if raw is None:
        return DnsRule()
    d = r.mapping(raw, "cluster.dns", optional=("nodes_per_replica", "max_replicas"))
    default = DnsRule()
    return DnsRule(nodes_per_replica=d.get("nodes_per_replica", default.nodes_per_replica),
                   max_replicas=d.get("max_replicas", default.max_replicas))


def _endpoint(r: _Reader, raw: Any, where: str, default_port: int) -> Endpoint:
    e = r.mapping(raw, where, required=("name",), optional=("address", "port"))
    name = r.check(rules.dns_name, e["name"], f"{where}.name", "api.example.internal")
    # Absent or null: no fixed address (a load balancer's DNS name is enough).
    address = (r.address(e["address"], f"{where}.address") if e.get("address") is not None
               else None)
    port = r.integer(e.get("port", default_port), f"{where}.port", 1, 65535)
    return Endpoint(name=name, address=address, port=port)


def _zones(r: _Reader, raw: Any, zonal: dict[str, Any], cluster: Cluster) -> tuple[Zone, ...]:
    service = ipaddress.ip_network(cluster.service_cidr)
    pod = ipaddress.ip_network(cluster.pod_cidr)

    def one(item: Any, where: str) -> Zone:
        z = r.mapping(item, where, required=("name", "subnets"))
        name = r.check(rules.dns_label, z["name"], f"{where}.name",
                       "use the availability zone's name, e.g. eu-west-1a")
        subnets = r.items(z["subnets"], f"{where}.subnets", r.cidr)
        for i, net in enumerate(subnets):
            for other, label in ((service, "cluster.service_cidr"), (pod, "cluster.pod_cidr")):
                if net.overlaps(other):  # type: ignore[arg-type]
                    raise r.fail(f"{where}.subnets[{i}]", f"{net} overlaps {label} {other}; "
                                                          "choose host subnets outside it")
        if name not in zonal:
            raise r.fail(f"endpoints.zones.{name}", f"missing: zone {name} needs its own load "
                                                    "balancer endpoint; add it")
        endpoint = _endpoint(r, zonal[name], f"endpoints.zones.{name}", cluster.api_port)
        return Zone(name=name, subnets=tuple(str(n) for n in subnets), endpoint=endpoint)

    zones = r.items(raw, "zones", one)
    seen: set[str] = set()
    for i, zone in enumerate(zones):
        if zone.name in seen:
            raise r.fail(f"zones[{i}].name", f"zone {zone.name} is listed twice; list each once")
        seen.add(zone.name)
    for name in zonal:
        if name not in seen:
            raise r.fail(f"endpoints.zones.{name}", "names no zone listed under zones; "
                                                    "remove it or add the zone")
    if len(zones) < 3:
        raise r.fail("zones", f"{len(zones)} zone(s) given; a multi-zone control plane needs "
                              "at least three zones")
    all_subnets = [(z.name, ipaddress.ip_network(s)) for z in zones for s in z.subnets]
    for i, (zname, net) in enumerate(all_subnets):
        for oname, other in all_subnets[i + 1:]:
            if net.overlaps(other):  # type: ignore[arg-type]
                raise r.fail(f"zones.{oname}.subnets", f"{other} overlaps {net} of zone "
                                                       f"{zname}; give each zone its own ranges")
    return tuple(zones)


def _host_key(r: _Reader, value: Any, where: str) -> str:
    """An OpenSSH public key line, parsed in full; returns `<type> <base64>` (a trailing
    comment is dropped)."""
    return r.check(rules.public_key, value, where, what="host key", hint=_HOST_KEY_HINT)


_ETCD_VOLUME = re.compile(r"(vol-[0-9a-f]{8,17}|/dev/[A-Za-z0-9/_.-]+)\Z", re.ASCII)


def _hosts(r: _Reader, raw: Any, zones: tuple[Zone, ...], cluster: Cluster) -> tuple[Host, ...]:
    by_zone = {z.name: z for z in zones}
    service = ipaddress.ip_network(cluster.service_cidr)
    pod = ipaddress.ip_network(cluster.pod_cidr)

    def one(item: Any, where: str) -> Host:
        h = r.mapping(item, where, required=("name", "zone", "roles", "address", "host_key"),
                      optional=("ssh_port", "advertise_address", "etcd_volume"))
        name = r.check(rules.dns_label, h["name"], f"{where}.name",
                       "use lower-case letters, digits and '-' (it becomes the node name)")
        zone = r.string(h["zone"], f"{where}.zone")
        if zone not in by_zone:
            raise r.fail(f"{where}.zone", f"{zone!r} is not a zone listed under zones; "
                                          f"use one of: {', '.join(by_zone)}")
        roles = r.items(h["roles"], f"{where}.roles",
                        lambda v, w: r.choice(v, w, ROLES))
        if len(set(roles)) != len(roles):
            raise r.fail(f"{where}.roles", "a role is listed twice; list each once")
        address = r.address(h["address"], f"{where}.address")
        ip = ipaddress.ip_address(address)
        subnets = [ipaddress.ip_network(s) for s in by_zone[zone].subnets]
        if not any(ip in net for net in subnets):
            raise r.fail(f"{where}.address", f"{address} is outside the subnets of zone {zone} "
                                             f"({', '.join(map(str, subnets))}); use an address "
                                             "inside them")
        if ip in service or ip in pod:
            raise r.fail(f"{where}.address", f"{address} lies in the service or pod CIDR; "
                                             "host addresses must be outside both")
        advertise = (r.address(h["advertise_address"], f"{where}.advertise_address")
                     if "advertise_address" in h else address)
        return Host(name=name, zone=zone, roles=tuple(roles), address=address,
                    ssh_port=r.integer(h.get("ssh_port", 22), f"{where}.ssh_port", 1, 65535),
                    host_key=_host_key(r, h["host_key"], f"{where}.host_key"),
                    advertise_address=advertise,
                    etcd_volume=(r.string(h["etcd_volume"], f"{where}.etcd_volume",
                                          _ETCD_VOLUME, "give an EBS volume ID (vol-0123...) "
                                          "or a device path (/dev/nvme1n1)")
                                 if h.get("etcd_volume") is not None else None))

    hosts = r.items(raw, "hosts", one)
    names: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for i, host in enumerate(hosts):
        if host.name in names:
            raise r.fail(f"hosts[{i}].name", f"{host.name} is also hosts[{names[host.name]}]; "
                                             "give every host its own name")
        names[host.name] = i
        if host.address in addresses:
            raise r.fail(f"hosts[{i}].address", f"{host.address} is also the address of "
                                                f"hosts[{addresses[host.address]}]; give every "
                                                "host its own address")
        addresses[host.address] = i
    return tuple(hosts)


def _ssh(r: _Reader, raw: Any, hosts: tuple[Host, ...]) -> SSHSettings:
    s = r.mapping(raw, "ssh", required=("user", "private_key"),
                  optional=("bastion", "connect_timeout", "command_timeout", "retries",
                            "parallel", "authorized_keys"))
    bastion = None
    if s.get("bastion") is not None:
        b = r.mapping(s["bastion"], "ssh.bastion", required=("name", "address", "host_key"),
                      optional=("ssh_port",))
        bastion = Bastion(
            name=r.check(rules.dns_label, b["name"], "ssh.bastion.name"),
            address=r.address(b["address"], "ssh.bastion.address"),
            ssh_port=r.integer(b.get("ssh_port", 22), "ssh.bastion.ssh_port", 1, 65535),
            host_key=_host_key(r, b["host_key"], "ssh.bastion.host_key"),
        )
        if bastion.name in {h.name for h in hosts}:
            raise r.fail("ssh.bastion.name", f"{bastion.name} is also a cluster host; "
                                              "give the bastion its own name")
    return SSHSettings(
        user=r.check(rules.user_name, s["user"], "ssh.user"),
        private_key=r.check(rules.file_path, s["private_key"], "ssh.private_key",
                            _PRIVATE_KEY_HINT),
        bastion=bastion,
        connect_timeout=r.number(s.get("connect_timeout", 10), "ssh.connect_timeout", 0.1, 600),
        command_timeout=r.number(s.get("command_timeout", 300), "ssh.command_timeout", 1, 86400),
        retries=r.integer(s.get("retries", 3), "ssh.retries", 0, 20),
        parallel=r.integer(s.get("parallel", 32), "ssh.parallel", 1, 1024),
        authorized_keys=tuple(r.items(
            s["authorized_keys"], "ssh.authorized_keys",
            lambda v, w: r.check(rules.public_key, v, w, what="public key",
                                 hint=_HOST_KEY_HINT))) if "authorized_keys" in s else (),
    )


def _pki(r: _Reader, raw: Any) -> PKISettings:
    p = r.mapping(raw, "pki", optional=PKI_FIELDS)
    settings, problems = rules.pki_settings(p, {name: f"pki.{name}" for name in PKI_FIELDS})
    if problems:
        raise r.fail(problems[0].field, problems[0].message)
    assert settings is not None
    return settings


def _check_topology(r: _Reader, zones: tuple[Zone, ...], hosts: tuple[Host, ...]) -> None:
    """Rules across hosts and zones: the shape the design requires of every cluster."""
    for zone in zones:
        in_zone = [h for h in hosts if h.zone == zone.name]
        cp = [h for h in in_zone if h.has("control-plane")]
        if not cp:
            raise r.fail("hosts", f"zone {zone.name} has no control-plane host; give it one "
                                  "(the control plane must be replicated in every zone)")
        if len(cp) > 2:
            raise r.fail("hosts", f"zone {zone.name} has {len(cp)} control-plane hosts; use one "
                                  "or two per zone and add zones to grow further")
        if not any(h.has("etcd") for h in in_zone):
            raise r.fail("hosts", f"zone {zone.name} has no etcd host; give one of its "
                                  "control-plane hosts the etcd role")
    for i, host in enumerate(hosts):
        if host.has("etcd") and not host.has("control-plane"):
            raise r.fail(f"hosts[{i}].roles", "etcd runs on control-plane hosts here (stacked); "
                                              "add the control-plane role or drop etcd")


# --------------------------------------------------------------------------- before use


def check_private_key(inventory: Inventory) -> None:
    """The operator's key (`ssh.private_key`, `~` expanded) can be read and loaded, as the
    SSH connections will load it: checked before anything is issued or written, so a wrong
    path is bad input (exit 2), not a failure after the PKI is made."""
    import paramiko  # only the commands that connect need it

    path = os.path.expanduser(inventory.ssh.private_key)
    locked = "a passphrase protects it, and the bootstrap reads keys without one"
    try:
        paramiko.PKey.from_path(path)
        return
    except paramiko.PasswordRequiredException:
        reason = locked
    except TypeError as err:  # how cryptography says so for an OpenSSH-format key
        if "password" not in str(err):
            raise
        reason = locked
    except OSError as err:
        reason = err.strerror or type(err).__name__
    except (paramiko.SSHException, paramiko.pkey.UnknownKeyType, ValueError):
        reason = "not a private key paramiko can load"
    raise ConfigError(rules.one_line(
        f"{inventory.source}: ssh.private_key: cannot load {path} ({reason}); "
        f"{_PRIVATE_KEY_HINT}"))
