"""The network: one VPC, a public and a private subnet per zone, egress through NAT.

Control-plane hosts and nodes live in private subnets; only the bastion (and a public API
load balancer, if enabled) live in public ones. NAT gateways are one per zone where a zone's
outage must not cut the others off (prod), or a single one to save cost (test).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.base import Component
from components.settings import Settings


@dataclass(frozen=True)
class NetworkArgs:
    settings: Settings


class Network(Component):
    kind = "Network"

    def __init__(self, name: str, args: NetworkArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args.settings, opts)
        s = args.settings
        self.vpc = aws.ec2.Vpc(
            self.child_name("vpc"), cidr_block=s.vpc_cidr, enable_dns_support=True,
            enable_dns_hostnames=True, tags=self.tags(None, "vpc"), opts=self.opts())
        igw = aws.ec2.InternetGateway(
            self.child_name("igw"), vpc_id=self.vpc.id, tags=self.tags(None, "igw"),
            opts=self.opts())
        public_rt = aws.ec2.RouteTable(
            self.child_name("public"), vpc_id=self.vpc.id, tags=self.tags(None, "public"),
            opts=self.opts())
        aws.ec2.Route(self.child_name("public-default"), route_table_id=public_rt.id,
                      destination_cidr_block="0.0.0.0/0", gateway_id=igw.id, opts=self.opts())

        self.public_subnets: dict[str, aws.ec2.Subnet] = {}
        self.private_subnets: dict[str, aws.ec2.Subnet] = {}
        nat_by_zone: dict[str, aws.ec2.NatGateway] = {}
        for i, zone in enumerate(s.zones):
            z = zone.name
            public = aws.ec2.Subnet(
                self.child_name("public", z), vpc_id=self.vpc.id, cidr_block=zone.public_subnet,
                availability_zone=z, map_public_ip_on_launch=False,
                tags={**self.tags(z, "public", z), "kubernetes.io/role/elb": "1"},
                opts=self.opts())
            private = aws.ec2.Subnet(
                self.child_name("private", z), vpc_id=self.vpc.id,
                cidr_block=zone.private_subnet, availability_zone=z,
                map_public_ip_on_launch=False,
                tags={**self.tags(z, "private", z), "kubernetes.io/role/internal-elb": "1"},
                opts=self.opts())
            self.public_subnets[z], self.private_subnets[z] = public, private
            aws.ec2.RouteTableAssociation(self.child_name("public", z), subnet_id=public.id,
                                          route_table_id=public_rt.id, opts=self.opts())
            if s.nat_gateways == "perZone" or i == 0:
                eip = aws.ec2.Eip(self.child_name("nat", z), domain="vpc",
                                  tags=self.tags(z, "nat", z), opts=self.opts())
                nat_by_zone[z] = aws.ec2.NatGateway(
                    self.child_name("nat", z), allocation_id=eip.allocation_id,
                    subnet_id=public.id, tags=self.tags(z, "nat", z),
                    opts=self.opts(depends_on=[igw]))
        first_nat = nat_by_zone[s.zones[0].name]
        for zone in s.zones:
            z = zone.name
            rt = aws.ec2.RouteTable(self.child_name("private", z), vpc_id=self.vpc.id,
                                    tags=self.tags(z, "private", z), opts=self.opts())
            aws.ec2.Route(self.child_name("private-default", z), route_table_id=rt.id,
                          destination_cidr_block="0.0.0.0/0",
                          nat_gateway_id=nat_by_zone.get(z, first_nat).id, opts=self.opts())
            aws.ec2.RouteTableAssociation(self.child_name("private", z),
                                          subnet_id=self.private_subnets[z].id,
                                          route_table_id=rt.id, opts=self.opts())
        self.nat_gateways = nat_by_zone
        self.register_outputs({
            "vpcId": self.vpc.id,
            "publicSubnetIds": {z: sn.id for z, sn in self.public_subnets.items()},
            "privateSubnetIds": {z: sn.id for z, sn in self.private_subnets.items()},
        })
