"""Stack configuration -> typed, frozen, validated settings.

This is the only module that reads `Pulumi.<stack>.yaml`. Every rule the cluster must obey
(zones, the large-cluster limits of seed 004, CIDRs that fit, admin CIDRs that are not the
internet) is checked here, before a single resource is declared, and every mistake becomes
one line naming the key and the fix. All mistakes are collected, so a user fixes them in one
round. The rules for values the inventory holds too (names, version, ranges, SSH keys, PKI)
are bootstrap/rules.py, shared with bootstrap/inventory.py: what this accepts, the bootstrap
accepts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bootstrap import ports, rules
from bootstrap.errors import ConfigError
from bootstrap.node import aws_identity_certs
from bootstrap.rules import PKI_DEFAULTS, PKISettings

NS = "multizone"
# The stack that always carries deletion protection (Pulumi `protect` and AWS-side).
PROD_STACK = "prod"

# Seed 004, "large clusters": the configurations Kubernetes is designed to accept.
MAX_NODES = 5_000
MAX_PODS_PER_NODE = 110
MAX_PODS = 150_000
MAX_CONTAINERS = 300_000
# Stated assumption: an average pod runs two containers (app + one sidecar). Override with
# multizone:nodePool.containersPerPod if your workloads differ.
DEFAULT_CONTAINERS_PER_POD = 2

# Ports the design opens (see components/security.py for who may reach them): one list,
# bootstrap/ports.py, shared with the bootstrap that runs the services on them.
SSH_PORT = ports.SSH
KUBELET_PORT = ports.KUBELET
ETCD_CLIENT_PORT, ETCD_PEER_PORT = ports.ETCD_CLIENT, ports.ETCD_PEER
ETCD_EVENTS_CLIENT_PORT, ETCD_EVENTS_PEER_PORT = ports.ETCD_EVENTS_CLIENT, ports.ETCD_EVENTS_PEER
KONNECTIVITY_AGENT_PORT = ports.KONNECTIVITY_AGENT
KONNECTIVITY_HEALTH_PORT = ports.KONNECTIVITY_HEALTH

AWS_RESERVED_PER_SUBNET = 5  # first four addresses and the last one of every subnet

# Settings of the stack alone; the rules for values the inventory shares (names, versions,
# ranges, keys, PKI) are bootstrap/rules.py. Whole-value, ASCII-only patterns (`\Z`).
_AMI = re.compile(r"ami-[0-9a-f]{8}(?:[0-9a-f]{9})?\Z", re.ASCII)
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+\Z", re.ASCII)
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]+\Z", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z", re.ASCII)
_PUBLIC_KEY_HINT = "paste the operator's public key line ('ssh-ed25519 AAAA...')"
# multizone:pki keys -> the PKISettings fields (and the inventory's pki.* keys).
_PKI_KEYS = {"keyType": "key_type", "rsaBits": "rsa_bits",
             "caValidityDays": "ca_validity_days", "validityDays": "validity_days",
             "renewBeforeDays": "renew_before_days", "caKeysOnHosts": "ca_keys_on_hosts"}
T = TypeVar("T")


class SettingsError(ConfigError):
    """Bad stack configuration: one line per mistake, each naming the key and the fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


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


@dataclass(frozen=True)
class Settings:
    stack: str
    region: str
    cluster_name: str
    kubernetes_version: str
    zones: tuple[ZoneSettings, ...]
    vpc_cidr: str
    service_cidr: str
    pod_cidr: str
    dns_domain: str
    api_port: int
    egress: str
    control_plane_per_zone: int
    control_plane_instance_type: str
    etcd_volume_gib: int
    bastion_instance_type: str
    image_id: str
    node_pool: NodePoolSettings
    nat_gateways: str
    admin_cidrs: tuple[str, ...]
    api_allowed_cidrs: tuple[str, ...]
    api_public: bool
    ssh: SSHSettings
    pki: PKISettings
    protect: bool
    ephemeral: bool
    expires_at: str | None
    # zone -> its control-plane override; zones not listed use imageId and
    # controlPlaneInstanceType.
    control_plane_zones: Mapping[str, ControlPlaneZoneSettings] = field(default_factory=dict)

    def control_plane_image(self, zone: str) -> str:
        """The AMI of the zone's control-plane hosts: its override, else `imageId`."""
        found = self.control_plane_zones.get(zone)
        return found.image_id if found and found.image_id else self.image_id

    def control_plane_type(self, zone: str) -> str:
        """The instance type of the zone's control-plane hosts: its override, else
        `controlPlaneInstanceType`."""
        found = self.control_plane_zones.get(zone)
        return found.instance_type if found and found.instance_type \
            else self.control_plane_instance_type

    @property
    def zone_names(self) -> tuple[str, ...]:
        return tuple(z.name for z in self.zones)

    @property
    def cluster_tag(self) -> str:
        """The tag key the AWS cloud provider uses to find a cluster's resources."""
        return f"kubernetes.io/cluster/{self.cluster_name}"

    @property
    def max_nodes(self) -> int:
        """Every kubelet the stack can run: node pools at their maximum plus control plane."""
        per_zone = self.node_pool.max_size + self.control_plane_per_zone
        return per_zone * len(self.zones)


# --------------------------------------------------------------------------- reading

KEYS = (
    "clusterName", "kubernetesVersion", "zones", "vpcCidr", "serviceCidr", "podCidr",
    "dnsDomain", "apiPort", "egress", "controlPlanePerZone", "controlPlaneInstanceType",
    "controlPlaneZones",
    "etcdVolumeGiB", "bastionInstanceType", "imageId", "nodePool", "natGateways",
    "adminCidrs", "apiAllowedCidrs", "apiPublic", "ssh", "pki", "protect", "ephemeral",
    "expiresAt",
)
REQUIRED = ("clusterName", "kubernetesVersion", "zones", "vpcCidr", "imageId", "adminCidrs",
            "ssh")


def read_pulumi_config() -> dict[str, Any]:
    """Every `multizone:*` and `aws:region` value the Pulumi engine passed to the program."""
    from pulumi.runtime import config as runtime_config

    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    return {k: v for k, v in merged.items() if k.startswith(f"{NS}:") or k == "aws:region"}


def _decode(value: Any) -> Any:
    """The engine passes structured values as JSON text and scalars as plain text."""
    if not isinstance(value, str):
        return value
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
        return value
    # "1.31" stays text (a version, say): only structures, whole numbers and booleans decode.
    return decoded if isinstance(decoded, dict | list | bool | int) else value


class _Checker:
    """Collects one line per mistake; each accessor returns None when its value is bad."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, key: str, message: str) -> None:
        self.problems.append(rules.one_line(f"{NS}:{key}: {message}"))

    def ok(self, rule: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Apply one of `bootstrap.rules` (shared with the inventory); a `Problem` becomes
        one line naming the stack key, and the value None."""
        try:
            return rule(*args, **kwargs)
        except rules.Problem as problem:
            self.bad(problem.field, problem.message)
            return None

    def string(self, raw: Mapping[str, Any], key: str, where: str, default: Any = None,
               pattern: re.Pattern[str] | None = None, hint: str = "") -> str | None:
        value = raw.get(key, default)
        if pattern is None:
            return self.ok(rules.text, value, where, hint or "set it")
        return self.ok(rules.matching, value, where, pattern, hint)

    def integer(self, raw: Mapping[str, Any], key: str, where: str, default: Any,
                low: int, high: int, hint: str = "") -> int | None:
        return self.ok(rules.integer, raw.get(key, default), where, low, high, hint)

    def boolean(self, raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = self.ok(rules.boolean, raw.get(key, default), where)
        return default if value is None else value

    def choice(self, raw: Mapping[str, Any], key: str, where: str, default: str,
               choices: tuple[str, ...]) -> str | None:
        value = raw.get(key, default)
        if value not in choices:
            self.bad(where, f"{value!r} is not allowed; use one of: {', '.join(choices)}")
            return None
        return str(value)

    def cidr(self, value: Any, where: str) -> ipaddress.IPv4Network | None:
        net = self.ok(rules.cidr, value, where, ipv4_only=True, example="10.0.16.0/20")
        return net if isinstance(net, ipaddress.IPv4Network) else None

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            self.bad(where, f"expected a mapping, got {rules.describe(value)}; see "
                            "stacks/Pulumi.dev.yaml")
            return {}
        for key in value:
            if not isinstance(key, str):
                self.bad(where, f"key {key!r} is not text; quote it")
            elif key not in allowed:
                self.bad(f"{where}.{key}", f"unknown key; use one of: {', '.join(allowed)}")
        return {k: v for k, v in value.items() if isinstance(k, str)}

    def cidr_list(self, value: Any, where: str) -> list[ipaddress.IPv4Network] | None:
        if not isinstance(value, list) or not value:
            self.bad(where, f"expected a non-empty list of CIDRs, got {rules.describe(value)}; "
                            "write e.g. [203.0.113.0/24]")
            return None
        nets = [self.cidr(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return None if None in nets else nets  # type: ignore[return-value]


def from_config(config: Mapping[str, Any], stack: str,
                available_zones: Sequence[str] | None = None) -> Settings:
    """Validate the stack's configuration; raise `SettingsError` listing every mistake.

    `available_zones` are the region's zones as AWS reports them (`getAvailabilityZones`);
    without them the zone names are only checked against the region's naming.
    """
    c = _Checker()
    raw = {k.split(":", 1)[1]: _decode(v) for k, v in config.items()
           if isinstance(k, str) and k.startswith(f"{NS}:")}
    for key in raw:
        if key not in KEYS:
            c.bad(key, f"unknown key; use one of: {', '.join(KEYS)}")
    for key in REQUIRED:
        if key not in raw:
            c.bad(key, "missing; add it to stacks/Pulumi.<stack>.yaml "
                       "(see stacks/Pulumi.dev.yaml)")
    region = config.get("aws:region")
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        c.problems.append(rules.one_line(f"aws:region: {region!r} is not an AWS region; "
                                         "run `pulumi config set aws:region eu-west-1`"))
        region = None
    elif (no_certificate := aws_identity_certs.unpinned(region)) is not None:
        # Auto-scaled nodes join by the region's signed identity document (docs/nodes.md).
        c.problems.append(rules.one_line(f"aws:region: {no_certificate}, or use a region that "
                                         "is pinned there"))

    name = None
    if "clusterName" in raw:
        name = c.ok(rules.dns_label, raw["clusterName"], "clusterName",
                    "use lower-case letters, digits and '-'")
        if name and len(name) > 20:
            c.bad("clusterName", f"{name!r} has {len(name)} characters; use at most 20 "
                                 "(it prefixes AWS names limited to 32)")
            name = None
    version = None
    if "kubernetesVersion" in raw:
        # Real hosts install only releases whose checksums the project pins.
        version = c.ok(rules.kubernetes_version, raw["kubernetesVersion"], "kubernetesVersion",
                       pinned=True)

    service = c.cidr(raw.get("serviceCidr", "10.96.0.0/12"), "serviceCidr")
    pod = c.cidr(raw.get("podCidr", "10.244.0.0/16"), "podCidr")
    if service and pod:  # overlap, and room for the services: the inventory's rule too
        c.ok(rules.service_and_pod, service, pod, "serviceCidr", f"{NS}:podCidr")
    vpc = c.cidr(raw["vpcCidr"], "vpcCidr") if "vpcCidr" in raw else None
    if vpc and not 16 <= vpc.prefixlen <= 28:
        c.bad("vpcCidr", f"{vpc} has prefix /{vpc.prefixlen}; AWS allows /16../28 for a VPC")
        vpc = None
    # Subnets are checked against the cluster ranges only if the VPC does not already
    # overlap them: one mistake, one line.
    subnet_service, subnet_pod = service, pod
    for label, other in (("serviceCidr", service), ("podCidr", pod)):
        if vpc and other and vpc.overlaps(other):
            c.bad("vpcCidr", f"{vpc} overlaps multizone:{label} {other}; choose a VPC range "
                             "outside the cluster's service and pod ranges")
            subnet_service = subnet_pod = None

    control_plane_per_zone = c.integer(
        raw, "controlPlanePerZone", "controlPlanePerZone", 1, 1, 2,
        hint="use 1 or 2 control-plane hosts per zone (scale them up before out, "
             "add zones to grow further)")
    pool = _node_pool(c, raw.get("nodePool", {}))
    zones = _zones(c, raw.get("zones"), region, available_zones, vpc, subnet_service, subnet_pod,
                   (pool.max_size if pool else 0) + (control_plane_per_zone or 0) + 1)
    if zones and pool and control_plane_per_zone:
        _capacity(c, pool, len(zones), control_plane_per_zone)

    admin = c.cidr_list(raw["adminCidrs"], "adminCidrs") if "adminCidrs" in raw else None
    for i, net in enumerate(admin or ()):
        if net.prefixlen < 8:
            how_much = "the whole" if net.prefixlen == 0 else "a large part of the"
            c.bad(f"adminCidrs[{i}]", f"{net} admits {how_much} internet to SSH; list your "
                                      "offices' or VPN's ranges (e.g. 203.0.113.0/24)")
    api_allowed = (c.cidr_list(raw["apiAllowedCidrs"], "apiAllowedCidrs")
                   if "apiAllowedCidrs" in raw else admin)
    api_public = c.boolean(raw, "apiPublic", "apiPublic", False)
    if "apiAllowedCidrs" in raw and api_allowed and not api_public \
            and any(n.prefixlen == 0 for n in api_allowed):
        c.bad("apiAllowedCidrs", "0.0.0.0/0 is meaningless for an internal load balancer; "
                                 "set multizone:apiPublic: true or list private ranges")

    image = c.string(raw, "imageId", "imageId", pattern=_AMI,
                     hint="give an AMI id such as ami-0123456789abcdef0") \
        if "imageId" in raw else None
    cp_type = c.string(raw, "controlPlaneInstanceType", "controlPlaneInstanceType", "m6i.large",
                       _INSTANCE_TYPE, "give an EC2 instance type such as m6i.large")
    cp_zones = _control_plane_zones(c, raw["controlPlaneZones"], zones, raw.get("zones")) \
        if "controlPlaneZones" in raw else {}
    bastion_type = c.string(raw, "bastionInstanceType", "bastionInstanceType", "t3.micro",
                            _INSTANCE_TYPE, "give an EC2 instance type such as t3.micro")
    etcd_gib = c.integer(raw, "etcdVolumeGiB", "etcdVolumeGiB", 20, 8, 1024,
                         hint="give etcd 8..1024 GiB (its quota is 8 GiB at most)")
    api_port = c.integer(raw, "apiPort", "apiPort", 6443, 1, 65535)
    if api_port in (SSH_PORT, KUBELET_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT,
                    ETCD_EVENTS_CLIENT_PORT, ETCD_EVENTS_PEER_PORT, KONNECTIVITY_AGENT_PORT):
        c.bad("apiPort", f"{api_port} is taken by another service; use 443 or 6443")
    egress = c.choice(raw, "egress", "egress", "konnectivity", tuple(sorted(rules.EGRESS_MODES)))
    nat = c.choice(raw, "natGateways", "natGateways", "perZone", ("perZone", "single"))
    dns_domain = c.ok(rules.dns_name, raw.get("dnsDomain", "cluster.local"), "dnsDomain",
                      "cluster.local", what="DNS domain")
    ssh = _ssh(c, raw.get("ssh")) if "ssh" in raw else None
    pki = _pki(c, raw.get("pki", {}))
    protect = c.boolean(raw, "protect", "protect", False)
    ephemeral = c.boolean(raw, "ephemeral", "ephemeral", False)
    expires = raw.get("expiresAt")
    if expires is not None:
        try:
            if not _DATE.fullmatch(str(expires)):  # fromisoformat alone takes other forms
                raise ValueError(expires)
            dt.date.fromisoformat(str(expires))
        except ValueError:
            c.bad("expiresAt", f"{expires!r} is not a date; write YYYY-MM-DD")
    if ephemeral and expires is None:
        c.bad("expiresAt", "missing for an ephemeral stack; add the date it may be destroyed "
                           "(YYYY-MM-DD)")
    if ephemeral and protect:
        c.bad("protect", "an ephemeral stack must be destroyable; set multizone:protect: false")
    if stack == PROD_STACK and not protect:
        c.bad("protect", "is false, but the prod stack must always be protected from deletion; "
                         "set multizone:protect: true (lift it by hand only to destroy prod)")

    if c.problems:
        raise SettingsError(c.problems)
    assert name and version and zones and vpc and service and pod and pool and ssh  # noqa: S101
    assert admin and api_allowed and image and cp_type and bastion_type and region  # noqa: S101
    return Settings(
        stack=stack, region=region, cluster_name=name, kubernetes_version=version,
        zones=zones, vpc_cidr=str(vpc), service_cidr=str(service), pod_cidr=str(pod),
        dns_domain=dns_domain or "cluster.local", api_port=api_port or 6443,
        egress=egress or "konnectivity", control_plane_per_zone=control_plane_per_zone or 1,
        control_plane_instance_type=cp_type, etcd_volume_gib=etcd_gib or 20,
        bastion_instance_type=bastion_type, image_id=image, node_pool=pool,
        nat_gateways=nat or "perZone", admin_cidrs=tuple(map(str, admin)),
        api_allowed_cidrs=tuple(map(str, api_allowed)), api_public=api_public, ssh=ssh,
        pki=pki, protect=protect, ephemeral=ephemeral,
        expires_at=str(expires) if expires is not None else None,
        control_plane_zones=cp_zones,
    )


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
