"""Security groups as an explicit matrix: every open port is one row of `matrix()`.

The matrix is plain data so that a test (and a reviewer) can read it beside the design:
the API server port only from nodes, load balancers and admin/API CIDRs; etcd (main and
events) only between control-plane hosts; the kubelet port of control-plane hosts only
from the control plane, of nodes never (seed 001: the API server reaches nodes only
through its egress path); Konnectivity (agents dial out) or SSH-tunnel egress only as the
chosen mode needs; SSH only from the bastion,
and to the bastion only from admin CIDRs. Security groups are stateful, so every ingress row
from another group gets its mirrored egress row; nothing else is open (the default
allow-all egress rule is removed by the provider when a group is created in a VPC).
The balancers' HTTPS `/readyz` health checks go to the API port itself ("traffic-port"), so
the same rows carry them: a network load balancer's health checks obey its group's egress
rules, and the control plane admits the API port from both balancer groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.base import Component
from components.settings import (
    ETCD_CLIENT_PORT,
    ETCD_EVENTS_CLIENT_PORT,
    ETCD_EVENTS_PEER_PORT,
    ETCD_PEER_PORT,
    KONNECTIVITY_AGENT_PORT,
    KONNECTIVITY_HEALTH_PORT,
    KUBELET_PORT,
    SSH_PORT,
    Settings,
)

BASTION, CONTROL_PLANE, NODES = "bastion", "control-plane", "nodes"
LB_ZONAL, LB_REGIONAL = "lb-zonal", "lb-regional"
GROUPS = (BASTION, CONTROL_PLANE, NODES, LB_ZONAL, LB_REGIONAL)
INTERNET = "0.0.0.0/0"
DOWNLOAD_PORTS = (80, 443)  # packages and release binaries, through NAT


@dataclass(frozen=True)
class Rule:
    """One open port: `group` admits (ingress) or sends (egress) `port` to/from `peer`.

    `peer` is another group's name or a CIDR.
    """

    group: str
    direction: str
    port: int
    peer: str
    why: str

    @property
    def peer_is_group(self) -> bool:
        return self.peer in GROUPS


def matrix(s: Settings) -> tuple[Rule, ...]:
    """Every rule of every group, derived from the settings and nothing else."""
    api = s.api_port
    rows: list[Rule] = []

    def admit(group: str, port: int, peers: tuple[str, ...] | list[str], why: str) -> None:
        rows.extend(Rule(group, "ingress", port, peer, why) for peer in peers)

    admit(BASTION, SSH_PORT, s.admin_cidrs, "operators to the bastion")
    admit(CONTROL_PLANE, SSH_PORT, [BASTION], "bootstrap through the bastion")
    admit(NODES, SSH_PORT, [BASTION], "bootstrap through the bastion")
    admit(CONTROL_PLANE, api, [NODES, LB_ZONAL, LB_REGIONAL], "API server")
    admit(LB_ZONAL, api, [NODES, CONTROL_PLANE], "kubelets and pods to the zone endpoints")
    users = tuple(dict.fromkeys((*s.admin_cidrs, *s.api_allowed_cidrs)))
    admit(LB_REGIONAL, api, users, "users and admins to the regional endpoint")
    for port, why in ((ETCD_CLIENT_PORT, "etcd client"), (ETCD_PEER_PORT, "etcd peer"),
                      (ETCD_EVENTS_CLIENT_PORT, "etcd events client"),
                      (ETCD_EVENTS_PEER_PORT, "etcd events peer")):
        admit(CONTROL_PLANE, port, [CONTROL_PLANE], why)
    admit(CONTROL_PLANE, KUBELET_PORT, [CONTROL_PLANE], "API server to control-plane kubelets")
    if s.egress == "konnectivity":
        # Nodes admit nothing from the control plane: agents dial out, through their zone
        # endpoint's balancer, to every proxy-server (it keeps their address).
        admit(LB_ZONAL, KONNECTIVITY_AGENT_PORT, [NODES], "Konnectivity agents to the servers")
        admit(CONTROL_PLANE, KONNECTIVITY_AGENT_PORT, [NODES, LB_ZONAL],
              "Konnectivity agents dial every server")
        admit(CONTROL_PLANE, KONNECTIVITY_HEALTH_PORT, [LB_ZONAL],
              "the balancer's health check of each proxy-server")
    else:
        admit(NODES, SSH_PORT, [CONTROL_PLANE], "SSH-tunnel egress (kubelet port stays shut)")

    mirrored = [Rule(r.peer, "egress", r.port, r.group, r.why) for r in rows if r.peer_is_group]
    downloads = [Rule(g, "egress", port, INTERNET, "downloads through NAT")
                 for g in (CONTROL_PLANE, NODES) for port in DOWNLOAD_PORTS]
    return tuple(dict.fromkeys([*rows, *mirrored, *downloads]))


@dataclass(frozen=True)
class SecurityArgs:
    settings: Settings
    vpc_id: pulumi.Input[str]


class Security(Component):
    kind = "Security"

    def __init__(self, name: str, args: SecurityArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args.settings, opts)
        self.groups = {
            g: aws.ec2.SecurityGroup(
                self.child_name(g), vpc_id=args.vpc_id, revoke_rules_on_delete=True,
                description=f"{args.settings.cluster_name} {g}", tags=self.tags(None, g),
                opts=self.opts())
            for g in GROUPS
        }
        self.rules = matrix(args.settings)
        for rule in self.rules:
            short = "in" if rule.direction == "ingress" else "out"
            name = self.child_name(rule.group, short, str(rule.port), rule.peer)
            peer_group = self.groups[rule.peer].id if rule.peer_is_group else None
            peer_cidr = None if rule.peer_is_group else rule.peer
            tags = self.tags(None, rule.group, short, str(rule.port))
            if rule.direction == "ingress":
                aws.vpc.SecurityGroupIngressRule(name, aws.vpc.SecurityGroupIngressRuleArgs(
                    security_group_id=self.groups[rule.group].id, ip_protocol="tcp",
                    from_port=rule.port, to_port=rule.port, description=rule.why, tags=tags,
                    referenced_security_group_id=peer_group, cidr_ipv4=peer_cidr),
                    opts=self.opts())
            else:
                aws.vpc.SecurityGroupEgressRule(name, aws.vpc.SecurityGroupEgressRuleArgs(
                    security_group_id=self.groups[rule.group].id, ip_protocol="tcp",
                    from_port=rule.port, to_port=rule.port, description=rule.why, tags=tags,
                    referenced_security_group_id=peer_group, cidr_ipv4=peer_cidr),
                    opts=self.opts())
        self.register_outputs({g: sg.id for g, sg in self.groups.items()})
