"""The sections of the stack settings that have a shape of their own (zones, the
control-plane zone overrides, the node pool and its capacity, SSH, PKI): each one's type and
its reader, every mistake collected by `_Checker`.

Split from components.settings so that the top-level reader stays one screenful of rules;
what the whole stack may hold (seed 004's limits) is checked here, with the node pool.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bootstrap import rules
from bootstrap.rules import PKI_DEFAULTS, PKISettings
from components.settings_checker import _AMI, _INSTANCE_TYPE, NS, _Checker

# Seed 004, "large clusters": the configurations Kubernetes is designed to accept.
MAX_NODES = 5_000
MAX_PODS_PER_NODE = 110
MAX_PODS = 150_000
MAX_CONTAINERS = 300_000
# Stated assumption: an average pod runs two containers (app + one sidecar). Override with
# multizone:nodePool.containersPerPod if your workloads differ.
DEFAULT_CONTAINERS_PER_POD = 2

AWS_RESERVED_PER_SUBNET = 5  # first four addresses and the last one of every subnet

_PUBLIC_KEY_HINT = "paste the operator's public key line ('ssh-ed25519 AAAA...')"
# multizone:pki keys -> the PKISettings fields (and the inventory's pki.* keys).
_PKI_KEYS = {"keyType": "key_type", "rsaBits": "rsa_bits",
             "caValidityDays": "ca_validity_days", "validityDays": "validity_days",
             "renewBeforeDays": "renew_before_days", "caKeysOnHosts": "ca_keys_on_hosts"}


@dataclass(frozen=True)
class ZoneSettings:
    name: str
    public_subnet: str
    private_subnet: str

    @property
    def suffix(self) -> str:
        """The zone letter(s), e.g. `a` of eu-west-1a: short names for hosts."""
        return self.name.rsplit("-", 1)[-1].lstrip("0123456789")


@dataclass(frozen=True)
class NodePoolSettings:
    instance_type: str
    min_size: int
    desired: int
    max_size: int
    pods_per_node: int
    containers_per_pod: int


@dataclass(frozen=True)
class ControlPlaneZoneSettings:
    """A zone's own control-plane image or instance type (`multizone:controlPlaneZones`):
    what lets a new AMI or type reach one zone per `pulumi up` (etcd keeps its quorum)."""

    image_id: str | None = None
    instance_type: str | None = None


@dataclass(frozen=True)
class SSHSettings:
    user: str
    private_key_path: str
    public_key: str



def _zones(c: _Checker, value: Any, region: str | None, available: Sequence[str] | None,
           vpc: ipaddress.IPv4Network | None, service: ipaddress.IPv4Network | None,
           pod: ipaddress.IPv4Network | None, hosts_per_zone: int) -> tuple[ZoneSettings, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        c.bad("zones", f"expected a list of zones, got {value!r}; see stacks/Pulumi.dev.yaml")
        return ()
    zones: list[ZoneSettings] = []
    subnets: list[tuple[str, ipaddress.IPv4Network]] = []
    for i, item in enumerate(value):
        where = f"zones[{i}]"
        z = c.mapping(item, where, ("name", "publicSubnet", "privateSubnet"))
        zname = c.string(z, "name", f"{where}.name", hint="name an availability zone")
        if zname and region and not (zname.startswith(region)
                                     and re.fullmatch(r"[a-z]", zname[len(region):])):
            c.bad(f"{where}.name", f"{zname} is not a zone of region {region}; use e.g. "
                                   f"{region}a")
            zname = None
        elif zname and available is not None and zname not in available:
            c.bad(f"{where}.name", f"{zname} is not available in {region}; use one of: "
                                   f"{', '.join(available)}")
            zname = None
        if zname and zname in [zone.name for zone in zones]:
            c.bad(f"{where}.name", f"{zname} is listed twice; list each zone once")
            zname = None
        nets = {}
        for key in ("publicSubnet", "privateSubnet"):
            net = c.cidr(z.get(key), f"{where}.{key}")
            if net is None:
                continue
            nets[key] = net
            if vpc and not net.subnet_of(vpc):
                c.bad(f"{where}.{key}", f"{net} is outside multizone:vpcCidr {vpc}; "
                                        "choose a subnet inside the VPC")
            if not 16 <= net.prefixlen <= 28:
                c.bad(f"{where}.{key}", f"{net} has prefix /{net.prefixlen}; AWS subnets "
                                        "are /16../28")
            for label, other in (("serviceCidr", service), ("podCidr", pod)):
                if other and net.overlaps(other):
                    c.bad(f"{where}.{key}", f"{net} overlaps multizone:{label} {other}; "
                                            "choose a subnet outside it")
            for other_where, other in subnets:
                if net.overlaps(other):
                    c.bad(f"{where}.{key}", f"{net} overlaps {other_where} {other}; give "
                                            "every subnet its own range")
            subnets.append((f"multizone:{where}.{key}", net))
        private = nets.get("privateSubnet")
        if private and private.num_addresses - AWS_RESERVED_PER_SUBNET < hosts_per_zone:
            c.bad(f"{where}.privateSubnet", f"{private} holds "
                                            f"{private.num_addresses - AWS_RESERVED_PER_SUBNET}"
                                            f" hosts but the zone may need {hosts_per_zone}; "
                                            "give it a larger range")
        if zname and len(nets) == 2:
            zones.append(ZoneSettings(zname, str(nets["publicSubnet"]),
                                      str(nets["privateSubnet"])))
    if len(value) < 3:
        c.bad("zones", f"{len(value)} zone(s) given; list three or more distinct zones "
                       "of the region")
    return tuple(zones) if len(zones) == len(value) else ()


def _control_plane_zones(c: _Checker, value: Any, zones: Sequence[ZoneSettings],
                         raw_zones: Any) -> dict[str, ControlPlaneZoneSettings]:
    """`controlPlaneZones: {<zone>: {imageId, instanceType}}`: one zone's control plane on
    another AMI or instance type than the others, to move the control plane one zone per
    `pulumi up` (docs/pulumi.md, "Changing the control plane")."""
    where = "controlPlaneZones"
    if not isinstance(value, Mapping):
        c.bad(where, f"expected a mapping of zone -> {{imageId, instanceType}}, got "
                     f"{rules.describe(value)}; write e.g. {{eu-west-1a: {{imageId: "
                     "ami-0123456789abcdef0}}")
        return {}
    # Zone names as listed (even if another zone line is wrong): one mistake, one line.
    listed = [z.get("name") for z in raw_zones if isinstance(z, Mapping)] \
        if isinstance(raw_zones, list) else [z.name for z in zones]
    found: dict[str, ControlPlaneZoneSettings] = {}
    for zone, item in value.items():
        here = f"{where}.{zone}"
        if not isinstance(zone, str) or zone not in listed:
            c.bad(here, f"is not one of multizone:zones; use one of: "
                        f"{', '.join(str(z) for z in listed)}")
            continue
        before = len(c.problems)
        fields = c.mapping(item, here, ("imageId", "instanceType"))
        if not isinstance(item, Mapping):
            continue
        if not fields:
            c.bad(here, "is empty; give imageId and/or instanceType, or remove the zone")
            continue
        image = c.string(fields, "imageId", f"{here}.imageId", pattern=_AMI,
                         hint="give an AMI id such as ami-0123456789abcdef0") \
            if "imageId" in fields else None
        itype = c.string(fields, "instanceType", f"{here}.instanceType", None,
                         _INSTANCE_TYPE, "give an EC2 instance type such as m6i.large") \
            if "instanceType" in fields else None
        if len(c.problems) == before:
            found[zone] = ControlPlaneZoneSettings(image, itype)
    return found


def _node_pool(c: _Checker, value: Any) -> NodePoolSettings | None:
    allowed = ("instanceType", "min", "desired", "max", "podsPerNode", "containersPerPod")
    p = c.mapping(value, "nodePool", allowed)
    before = len(c.problems)
    where: Callable[[str], str] = lambda k: f"nodePool.{k}"  # noqa: E731
    itype = c.string(p, "instanceType", where("instanceType"), "m6i.xlarge", _INSTANCE_TYPE,
                     "give an EC2 instance type such as m6i.xlarge")
    low = c.integer(p, "min", where("min"), 1, 0, MAX_NODES)
    desired = c.integer(p, "desired", where("desired"), low or 1, 0, MAX_NODES)
    high = c.integer(p, "max", where("max"), max(desired or 1, 1), 0, MAX_NODES,
                     hint=f"a zone's pool holds at most {MAX_NODES} nodes")
    pods = c.integer(p, "podsPerNode", where("podsPerNode"), MAX_PODS_PER_NODE, 1,
                     MAX_PODS_PER_NODE, hint=f"Kubernetes supports at most "
                                             f"{MAX_PODS_PER_NODE} pods a node")
    containers = c.integer(p, "containersPerPod", where("containersPerPod"),
                           DEFAULT_CONTAINERS_PER_POD, 1, 50)
    if low is not None and desired is not None and high is not None \
            and not low <= desired <= high:
        c.bad("nodePool", f"min {low}, desired {desired}, max {high} are out of order; "
                          "make min <= desired <= max")
    if len(c.problems) > before:
        return None
    return NodePoolSettings(itype, low, desired, high, pods, containers)  # type: ignore[arg-type]


def _capacity(c: _Checker, pool: NodePoolSettings, zones: int, cp_per_zone: int) -> None:
    """Seed 004: 5,000 nodes, 110 pods a node, 150,000 pods, 300,000 containers."""
    nodes = (pool.max_size + cp_per_zone) * zones
    pods = nodes * pool.pods_per_node
    containers = pods * pool.containers_per_pod
    if nodes > MAX_NODES:
        c.bad("nodePool.max", f"{zones} zones x ({pool.max_size} nodes + {cp_per_zone} "
                              f"control-plane) = {nodes} nodes exceeds {MAX_NODES}; lower it "
                              f"to {MAX_NODES // zones - cp_per_zone} or less")
    elif pods > MAX_PODS:
        c.bad("nodePool.podsPerNode", f"{nodes} nodes x {pool.pods_per_node} pods = {pods} "
                                      f"pods exceeds {MAX_PODS}; lower it to "
                                      f"{MAX_PODS // nodes} or less, or lower nodePool.max")
    elif containers > MAX_CONTAINERS:
        c.bad("nodePool.containersPerPod", f"{pods} pods x {pool.containers_per_pod} "
                                           f"containers = {containers} exceeds "
                                           f"{MAX_CONTAINERS}; lower podsPerNode or "
                                           "nodePool.max")


def _ssh(c: _Checker, value: Any) -> SSHSettings | None:
    s = c.mapping(value, "ssh", ("user", "privateKeyPath", "publicKey"))
    before = len(c.problems)
    user = c.ok(rules.user_name, s.get("user", "admin"), "ssh.user")
    path = c.ok(rules.file_path, s.get("privateKeyPath"), "ssh.privateKeyPath",
                "give the path of the operator's private key, e.g. ~/.ssh/id_ed25519")
    public = c.ok(rules.public_key, s.get("publicKey"), "ssh.publicKey", what="public key",
                  hint=_PUBLIC_KEY_HINT, keep_comment=True)
    if len(c.problems) > before:
        return None
    return SSHSettings(user, path, public)  # type: ignore[arg-type]


def _pki(c: _Checker, value: Any) -> PKISettings:
    """The inventory's rules for its pki mapping (bootstrap/rules.py), each mistake named
    as the stack file names the key (`multizone:pki.rsaBits`)."""
    p = c.mapping(value, "pki", tuple(_PKI_KEYS))
    values = {_PKI_KEYS[k]: v for k, v in p.items() if k in _PKI_KEYS}
    names = {field: f"pki.{key}" for key, field in _PKI_KEYS.items()}
    settings, problems = rules.pki_settings(values, names, ref=f"{NS}:")
    for problem in problems:
        c.bad(problem.field, problem.message)
    return settings or PKI_DEFAULTS
