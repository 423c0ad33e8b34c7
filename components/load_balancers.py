"""API server endpoints: per-zone names that prefer their own zone and fail over, and a
regional one.

Seed 004 asks that kubelets and pods in zone A reach the control plane in zone A and, when
zone A's control plane is offline, cross to the other zones (losing cp-a must not cut zone A
off the API). One balancer per zone, targeting only that zone's hosts, does the first half
and cannot do the second. So the zone endpoints are served by one internal network load
balancer (the *zone-endpoint balancer*):

- it has a node in every zone's private subnet and its targets are **every** control-plane
  host, so there is always somewhere to fail over to;
- cross-zone balancing is off (on the balancer and its target group): a balancer node only
  forwards to targets in its own zone, so traffic that reaches zone A's node stays in A;
- `dns_record.client_routing_policy` is `availability_zone_affinity`: the VPC's Route 53
  Resolver answers a client in zone A with zone A's balancer address only;
- the target group health-checks HTTPS `/readyz` (an API server that is up but not ready
  is out, which a TCP check cannot see) and its DNS-failover threshold
  (`target_group_health.dns_failover.minimum_healthy_targets.count`) is 1: a zone with no
  ready API server is taken out of the balancer's DNS, and the resolver then answers zone
  A's clients with the other zones' addresses. When zone A is ready again it comes back.

Each zone keeps a name of its own, `api-<zone letter>.<cluster>.internal`, in a Route 53
private hosted zone attached to the VPC: a CNAME to the zone-endpoint balancer. It is a
CNAME rather than an alias so that the resolver looks up the balancer's own name, the
lookup to which AWS applies zonal affinity and DNS failover. The per-zone names resolve
alike (the client's zone, not the name, picks the address), but zone X's kubelets are told
zone X's name, the inventory keeps one endpoint per zone, and the names can later be
pointed elsewhere without touching a node. A CNAME to a zonal balancer name
(`<zone>.<balancer>`) would pin the zone and lose the failover, so it is not used.

In `konnectivity` mode the zone-endpoint balancer also carries the agents' port (8132) to
a target group of its own with cross-zone balancing on: agents dial their zone's name and
reach the proxy-servers of every zone, as each must hold a connection to each server.

The regional balancer spans every zone with cross-zone balancing on and targets every
control-plane host; it is what users' kubeconfigs name (internal, or public with
`apiPublic`), and it health-checks HTTPS `/readyz` too.

Targets keep the client's address (instance targets preserve it), and an internal network
load balancer cannot carry a connection from a target back to itself: control-plane hosts
reach their own API server directly, never through these balancers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.base import Component
from components.control_plane import ControlPlaneHost
from components.settings import KONNECTIVITY_AGENT_PORT, KONNECTIVITY_HEALTH_PORT, Settings
from components.settings_sections import ZoneSettings

ZONAL, REGIONAL = "zonal", "regional"
ENDPOINT_TAG = "multizone/endpoint"  # which endpoint a balancer resource serves
AFFINITY = "availability_zone_affinity"
READYZ = "/readyz"
DNS_TTL = 60
# Health checks: ready within 20 s, out within 20 s (two checks 10 s apart).
HEALTH_CHECK: dict[str, Any] = {
    "protocol": "HTTPS", "port": "traffic-port", "path": READYZ, "matcher": "200",
    "interval": 10, "timeout": 5, "healthy_threshold": 2, "unhealthy_threshold": 2,
}


def private_domain(settings: Settings) -> str:
    """The private hosted zone of the cluster's endpoint names, e.g. `mz-prod.internal`
    (`.internal` is reserved for private use)."""
    return f"{settings.cluster_name}.internal"


def zone_endpoint_name(settings: Settings, zone: ZoneSettings) -> str:
    """Zone X's API endpoint name, e.g. `api-a.mz-prod.internal` for eu-west-1a."""
    return f"api-{zone.suffix}.{private_domain(settings)}"


@dataclass(frozen=True)
class LoadBalancersArgs:
    settings: Settings
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Mapping[str, pulumi.Input[str]]
    public_subnet_ids: Mapping[str, pulumi.Input[str]]
    zonal_security_group_id: pulumi.Input[str]
    regional_security_group_id: pulumi.Input[str]
    hosts: Sequence[ControlPlaneHost]


class LoadBalancers(Component):
    kind = "LoadBalancers"

    def __init__(self, name: str, args: LoadBalancersArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args.settings, opts)
        s = args.settings
        self.zonal = self._balancer(
            ZONAL, internal=True, subnets=list(args.private_subnet_ids.values()),
            sg=args.zonal_security_group_id, hosts=list(args.hosts), vpc_id=args.vpc_id)
        if s.egress == "konnectivity":
            self._konnectivity(list(args.hosts), args.vpc_id)
        subnets = args.public_subnet_ids if s.api_public else args.private_subnet_ids
        self.regional = self._balancer(
            REGIONAL, internal=not s.api_public, subnets=list(subnets.values()),
            sg=args.regional_security_group_id, hosts=list(args.hosts), vpc_id=args.vpc_id)

        self.private_zone = aws.route53.Zone(
            self.child_name("dns"), name=private_domain(s),
            comment=f"{s.cluster_name}: per-zone API endpoint names",
            vpcs=[aws.route53.ZoneVpcArgs(vpc_id=args.vpc_id)],
            tags=self.tags(None, "dns"), opts=self.opts())
        self.records: dict[str, aws.route53.Record] = {}
        for zone in s.zones:
            self.records[zone.name] = aws.route53.Record(
                self.child_name("dns", zone.name), zone_id=self.private_zone.zone_id,
                name=zone_endpoint_name(s, zone), type="CNAME", ttl=DNS_TTL,
                records=[self.zonal.dns_name], opts=self.opts())
        # What each zone's kubelets and pods are told, and what the inventory (and so the
        # API server certificate) carries.
        self.zone_endpoints: dict[str, pulumi.Output[str]] = {
            z: record.fqdn for z, record in self.records.items()}
        self.register_outputs({
            "regional": self.regional.dns_name,
            "zoneBalancer": self.zonal.dns_name,
            "zones": self.zone_endpoints,
        })

    def _konnectivity(self, hosts: list[ControlPlaneHost], vpc_id: pulumi.Input[str]) -> None:
        """Agents dial their zone endpoint on 8132 and must reach the proxy-server of every
        zone (an agent held only by its own zone's server leaves the other API servers
        without a way to its node): the zone-endpoint balancer forwards 8132 to a target
        group of its own with cross-zone balancing on, health-checked on the servers'
        plain HTTP /healthz."""
        def tags(*parts: str) -> dict[str, str]:
            return {**self.tags(None, ZONAL, *parts), ENDPOINT_TAG: ZONAL}

        group = aws.lb.TargetGroup(
            self.child_name(ZONAL, "konnectivity"), port=KONNECTIVITY_AGENT_PORT,
            protocol="TCP", vpc_id=vpc_id, target_type="instance",
            load_balancing_cross_zone_enabled="true",
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                protocol="HTTP", port=str(KONNECTIVITY_HEALTH_PORT), path="/healthz",
                matcher="200", interval=10, timeout=5, healthy_threshold=2,
                unhealthy_threshold=2),
            tags=tags("konnectivity"), opts=self.opts())
        for host in hosts:
            aws.lb.TargetGroupAttachment(
                self.child_name(ZONAL, "konnectivity", host.name), target_group_arn=group.arn,
                target_id=host.instance.id, port=KONNECTIVITY_AGENT_PORT, opts=self.opts())
        aws.lb.Listener(
            self.child_name(ZONAL, "konnectivity"), load_balancer_arn=self.zonal.arn,
            port=KONNECTIVITY_AGENT_PORT, protocol="TCP",
            default_actions=[{"type": "forward", "target_group_arn": group.arn}],
            tags=tags("konnectivity-listener"), opts=self.opts())

    def _balancer(self, label: str, *, internal: bool, subnets: list[pulumi.Input[str]],
                  sg: pulumi.Input[str], hosts: list[ControlPlaneHost],
                  vpc_id: pulumi.Input[str]) -> aws.lb.LoadBalancer:
        """A network load balancer on the API port over `hosts`; the zone-endpoint one
        (`ZONAL`) stays in the client's zone and fails over by DNS, the regional one
        balances across zones."""
        s = self.settings
        affine = label == ZONAL

        def tags(*parts: str) -> dict[str, str]:
            return {**self.tags(None, label, *parts), ENDPOINT_TAG: label}

        lb = aws.lb.LoadBalancer(
            self.child_name(label), load_balancer_type="network", internal=internal,
            subnets=subnets, security_groups=[sg],
            enable_cross_zone_load_balancing=not affine,
            dns_record_client_routing_policy=AFFINITY if affine else None,
            enable_deletion_protection=s.protect, tags=tags(), opts=self.opts())
        group = aws.lb.TargetGroup(
            self.child_name(label, "api"), port=s.api_port, protocol="TCP", vpc_id=vpc_id,
            target_type="instance",
            load_balancing_cross_zone_enabled="false" if affine else "true",
            health_check=aws.lb.TargetGroupHealthCheckArgs(**HEALTH_CHECK),
            target_group_health=aws.lb.TargetGroupTargetGroupHealthArgs(
                dns_failover=aws.lb.TargetGroupTargetGroupHealthDnsFailoverArgs(
                    minimum_healthy_targets_count="1")) if affine else None,
            tags=tags("api"), opts=self.opts())
        for host in hosts:
            aws.lb.TargetGroupAttachment(
                self.child_name(label, host.name), target_group_arn=group.arn,
                target_id=host.instance.id, port=s.api_port, opts=self.opts())
        aws.lb.Listener(
            self.child_name(label, "api"), load_balancer_arn=lb.arn, port=s.api_port,
            protocol="TCP", default_actions=[{"type": "forward",
                                               "target_group_arn": group.arn}],
            tags=tags("listener"), opts=self.opts())
        return lb
