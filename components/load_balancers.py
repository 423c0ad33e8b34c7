"""API server load balancers: one per zone for that zone's kubelets and pods, one regional.

Seed 004: traffic from zone A's kubelets must reach only zone A's control plane. So each
zonal network load balancer sits in its zone's private subnet, has cross-zone balancing off
(on the balancer and its target group), and its targets are only that zone's control-plane
hosts on the API server port. The regional balancer spans every zone and targets every
control-plane host; it is what users' kubeconfigs name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.base import Component
from components.control_plane import ControlPlaneHost
from components.settings import Settings


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
        self.zonal: dict[str, aws.lb.LoadBalancer] = {}
        for zone in s.zones:
            z = zone.name
            self.zonal[z] = self._balancer(
                z, z, internal=True, subnets=[args.private_subnet_ids[z]],
                sg=args.zonal_security_group_id, cross_zone=False,
                hosts=[h for h in args.hosts if h.zone == z], vpc_id=args.vpc_id)
        subnets = args.public_subnet_ids if s.api_public else args.private_subnet_ids
        self.regional = self._balancer(
            "regional", None, internal=not s.api_public, subnets=list(subnets.values()),
            sg=args.regional_security_group_id, cross_zone=True, hosts=list(args.hosts),
            vpc_id=args.vpc_id)
        self.register_outputs({
            "regional": self.regional.dns_name,
            "zones": {z: lb.dns_name for z, lb in self.zonal.items()},
        })

    def _balancer(self, label: str, zone: str | None, *, internal: bool,
                  subnets: list[pulumi.Input[str]], sg: pulumi.Input[str], cross_zone: bool,
                  hosts: list[ControlPlaneHost], vpc_id: pulumi.Input[str]) -> aws.lb.LoadBalancer:
        s = self.settings
        lb = aws.lb.LoadBalancer(
            self.child_name(label), load_balancer_type="network", internal=internal,
            subnets=subnets, security_groups=[sg],
            enable_cross_zone_load_balancing=cross_zone,
            enable_deletion_protection=s.protect, tags=self.tags(zone, label), opts=self.opts())
        group = aws.lb.TargetGroup(
            self.child_name(label, "api"), port=s.api_port, protocol="TCP", vpc_id=vpc_id,
            target_type="instance",
            load_balancing_cross_zone_enabled="true" if cross_zone else "false",
            health_check={"protocol": "TCP", "port": "traffic-port", "interval": 10,
                          "healthy_threshold": 2, "unhealthy_threshold": 2},
            tags=self.tags(zone, label, "api"), opts=self.opts())
        for host in hosts:
            aws.lb.TargetGroupAttachment(
                self.child_name(label, host.name), target_group_arn=group.arn,
                target_id=host.instance.id, port=s.api_port, opts=self.opts())
        aws.lb.Listener(
            self.child_name(label, "api"), load_balancer_arn=lb.arn, port=s.api_port,
            protocol="TCP", default_actions=[{"type": "forward",
                                               "target_group_arn": group.arn}],
            tags=self.tags(zone, label, "listener"), opts=self.opts())
        return lb
