"""Security groups as an explicit matrix: every open port is one row of `matrix()`.

The matrix is plain data so that a test (and a reviewer) can read it beside the design:
the API server port only from nodes, load balancers and admin/API CIDRs; etcd (main and
events) only between control-plane hosts; the kubelet port of control-plane hosts only
from the control plane, of nodes never (seed 001: the API server reaches nodes only
through its egress path); Konnectivity (agents dial out) or SSH-tunnel egress only as the
chosen mode needs; SSH only from the bastion,
and to the bastion only from admin CIDRs. The workloads add three things to nodes and no
more (docs/workloads-aws.md): the pod network's VXLAN (UDP 8472) between nodes only, and
from inside the VPC only (load balancers), the NodePort range (TCP and UDP) and
kube-proxy's health check port. Security groups are stateful, so every ingress row
from another group gets its mirrored egress row; nothing else is open (the default
allow-all egress rule is removed by the provider when a group is created in a VPC).
The balancers' HTTPS `/readyz` health checks go to the API port itself ("traffic-port"), so
the same rows carry them: a network load balancer's health checks obey its group's egress
rules, and the control plane admits the API port from both balancer groups.
"""

from __future__ import annotations

from collections.abc import Callable
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
TCP, UDP = "tcp", "udp"
# The pod network: our VXLAN overlay (device mzk-vxlan, VNI 1) carries pod-to-pod traffic
# between nodes as UDP to this port (the Linux kernel's own default port for VXLAN).
VXLAN_PORT = 8472
# Services of type NodePort/LoadBalancer: the API server's default --service-node-port-range.
NODE_PORTS = (30000, 32767)
# kube-proxy's healthz (KubeProxyConfiguration.healthzBindAddress): what a load balancer
# checks for a Service with externalTrafficPolicy: Local.
KUBE_PROXY_HEALTH_PORT = 10256


@dataclass(frozen=True)
class Rule:
    """One open port (or range `port`..`to_port`): `group` admits (ingress) or sends
    (egress) it to/from `peer`, over `protocol`.

    `peer` is another group's name or a CIDR.
    """

    group: str
    direction: str
    port: int
    peer: str
    why: str
    protocol: str = TCP
    to_port: int | None = None  # a range's last port; None: the single port `port`

    @property
    def peer_is_group(self) -> bool:
        return self.peer in GROUPS

    @property
    def last_port(self) -> int:
        return self.port if self.to_port is None else self.to_port

    @property
    def ports(self) -> str:
        """The port part of the rule's resource name: `8132`, or `udp-30000-32767`
        (TCP single ports keep their historical names, so existing rules are not renamed)."""
        span = str(self.port) if self.to_port is None else f"{self.port}-{self.to_port}"
        return span if self.protocol == TCP and self.to_port is None \
            else f"{self.protocol}-{span}"


def matrix(s: Settings) -> tuple[Rule, ...]:
    """Every rule of every group, derived from the settings and nothing else."""
    api = s.api_port
    rows: list[Rule] = []

    def admit(group: str, port: int, peers: tuple[str, ...] | list[str], why: str,
              protocol: str = TCP, to_port: int | None = None) -> None:
        rows.extend(Rule(group, "ingress", port, peer, why, protocol, to_port)
                    for peer in peers)

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
    workload_rows(admit, s.vpc_cidr)

    mirrored = [Rule(r.peer, "egress", r.port, r.group, r.why, r.protocol, r.to_port)
                for r in rows if r.peer_is_group]
    downloads = [Rule(g, "egress", port, INTERNET, "downloads through NAT")
                 for g in (CONTROL_PLANE, NODES) for port in DOWNLOAD_PORTS]
    return tuple(dict.fromkeys([*rows, *mirrored, *downloads]))


def workload_rows(admit: Callable[..., None], vpc_cidr: str) -> None:
    """What the cluster's workloads need on AWS, and nothing more: the overlay between nodes
    (never from the control plane: it reaches pods through its egress path), and from inside
    the VPC only (never 0.0.0.0/0) the NodePorts and kube-proxy's health check, which the
    load balancers in front of Services use."""
    admit(NODES, VXLAN_PORT, [NODES], "pod network: VXLAN overlay between nodes", UDP)
    for protocol in (TCP, UDP):
        admit(NODES, NODE_PORTS[0], [vpc_cidr],
              f"Service NodePorts ({protocol.upper()}) from load balancers in the VPC",
              protocol, NODE_PORTS[1])
    admit(NODES, KUBE_PROXY_HEALTH_PORT, [vpc_cidr],
          "kube-proxy health check for load balancers (externalTrafficPolicy: Local)")


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
            name = self.child_name(rule.group, short, rule.ports, rule.peer)
            peer_group = self.groups[rule.peer].id if rule.peer_is_group else None
            peer_cidr = None if rule.peer_is_group else rule.peer
            tags = self.tags(None, rule.group, short, rule.ports)
            if rule.direction == "ingress":
                aws.vpc.SecurityGroupIngressRule(name, aws.vpc.SecurityGroupIngressRuleArgs(
                    security_group_id=self.groups[rule.group].id, ip_protocol=rule.protocol,
                    from_port=rule.port, to_port=rule.last_port, description=rule.why,
                    tags=tags, referenced_security_group_id=peer_group, cidr_ipv4=peer_cidr),
                    opts=self.opts())
            else:
                aws.vpc.SecurityGroupEgressRule(name, aws.vpc.SecurityGroupEgressRuleArgs(
                    security_group_id=self.groups[rule.group].id, ip_protocol=rule.protocol,
                    from_port=rule.port, to_port=rule.last_port, description=rule.why,
                    tags=tags, referenced_security_group_id=peer_group, cidr_ipv4=peer_cidr),
                    opts=self.opts())
        self.register_outputs({g: sg.id for g, sg in self.groups.items()})
