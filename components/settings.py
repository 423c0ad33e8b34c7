"""Stack configuration -> typed, frozen, validated settings.

This is the only module that reads `Pulumi.<stack>.yaml`. Every rule the cluster must obey
(zones, the large-cluster limits of seed 004, CIDRs that fit, admin CIDRs that are not the
internet) is checked from here, before a single resource is declared, and every mistake becomes
one line naming the key and the fix. All mistakes are collected, so a user fixes them in one
round. The rules for values the inventory holds too (names, version, ranges, SSH keys, PKI)
are bootstrap/rules.py, shared with bootstrap/inventory.py: what this accepts, the bootstrap
accepts. The sections with a shape of their own (zones, node pool, SSH, PKI) are read by
components.settings_sections, every mistake collected by components.settings_checker.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bootstrap import ports, rules
from bootstrap.errors import ConfigError
from bootstrap.node import aws_identity_certs
from bootstrap.rules import PKISettings
from components.settings_checker import _AMI, _INSTANCE_TYPE, NS, _Checker
from components.settings_sections import (
    ControlPlaneZoneSettings,
    NodePoolSettings,
    SSHSettings,
    ZoneSettings,
    _capacity,
    _control_plane_zones,
    _node_pool,
    _pki,
    _ssh,
    _zones,
)

# The stack that always carries deletion protection (Pulumi `protect` and AWS-side).
PROD_STACK = "prod"

# Ports the design opens (see components/security.py for who may reach them): one list,
# bootstrap/ports.py, shared with the bootstrap that runs the services on them.
SSH_PORT = ports.SSH
KUBELET_PORT = ports.KUBELET
ETCD_CLIENT_PORT, ETCD_PEER_PORT = ports.ETCD_CLIENT, ports.ETCD_PEER
ETCD_EVENTS_CLIENT_PORT, ETCD_EVENTS_PEER_PORT = ports.ETCD_EVENTS_CLIENT, ports.ETCD_EVENTS_PEER
KONNECTIVITY_AGENT_PORT = ports.KONNECTIVITY_AGENT
KONNECTIVITY_HEALTH_PORT = ports.KONNECTIVITY_HEALTH

_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]+\Z", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z", re.ASCII)


class SettingsError(ConfigError):
    """Bad stack configuration: one line per mistake, each naming the key and the fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


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
