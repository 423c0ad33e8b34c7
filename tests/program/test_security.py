"""The security group matrix, read back from the declared rules, is exactly the design's."""

from __future__ import annotations

from ipaddress import ip_network

from tests.program.mocks import Evaluation

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
ADMIN = "203.0.113.0/24"
CP, NODES, BASTION = "control-plane", "nodes", "bastion"
LBZ, LBR = "lb-zonal", "lb-regional"
ETCD = (2379, 2380, 2382, 2383)


def declared(ev: Evaluation, typ: str) -> set[tuple[str, int | str, str]]:
    """(group, port, peer) for every rule, peers named by group or CIDR; a TCP port is its
    number, anything else `protocol:first[-last]` (the workloads' rules)."""
    names = {sg.id: sg.inputs["tags"]["Name"].removeprefix(
        f"{sg.inputs['tags']['multizone/cluster']}-security-")
        for sg in ev.of_type("aws:ec2/securityGroup:SecurityGroup")}
    rows: set[tuple[str, int | str, str]] = set()
    for rule in ev.of_type(typ):
        i = rule.inputs
        first, last = int(i["fromPort"]), int(i["toPort"])
        port: int | str = first if (i["ipProtocol"], first) == ("tcp", last) else \
            f"{i['ipProtocol']}:{first}" + (f"-{last}" if last != first else "")
        peer = names[i["referencedSecurityGroupId"]] if "referencedSecurityGroupId" in i \
            else i["cidrIpv4"]
        rows.add((names[i["securityGroupId"]], port, peer))
    return rows


def vpc(ev: Evaluation) -> str:
    (found,) = ev.of_type("aws:ec2/vpc:Vpc")
    return str(found.inputs["cidrBlock"])


def workloads(ev: Evaluation) -> set[tuple[str, int | str, str]]:
    """The overlay between nodes; NodePorts and kube-proxy's health from the VPC only
    (tests/program/test_workload_network.py reads them in detail)."""
    return {(NODES, "udp:8472", NODES), (NODES, "tcp:30000-32767", vpc(ev)),
            (NODES, "udp:30000-32767", vpc(ev)), (NODES, 10256, vpc(ev))}


COMMON_INGRESS = {
    (BASTION, 22, ADMIN),                        # to the bastion only from admin CIDRs
    (CP, 22, BASTION), (NODES, 22, BASTION),     # SSH only from the bastion
    (CP, 6443, NODES), (CP, 6443, LBZ), (CP, 6443, LBR),
    (LBZ, 6443, NODES), (LBZ, 6443, CP),
    (LBR, 6443, ADMIN),
    *((CP, port, CP) for port in ETCD),          # etcd main and events: control plane only
    (CP, 10250, CP),
}
# Nodes admit nothing from the control plane; agents reach every server through their zone
# endpoint's balancer (8132 across zones, health on 8134).
KONNECTIVITY_INGRESS = {(LBZ, 8132, NODES), (CP, 8132, NODES), (CP, 8132, LBZ), (CP, 8134, LBZ)}
SSH_TUNNEL_INGRESS = {(NODES, 22, CP)}
DOWNLOADS = {(g, p, "0.0.0.0/0") for g in (CP, NODES) for p in (80, 443)}


def mirror(rows: set[tuple[str, int | str, str]]) -> set[tuple[str, int | str, str]]:
    return {(peer, port, group) for group, port, peer in rows if "/" not in peer}


def test_konnectivity_matrix_is_exactly_the_design(prod: Evaluation) -> None:
    expected = COMMON_INGRESS | KONNECTIVITY_INGRESS | workloads(prod)
    assert declared(prod, INGRESS) == expected
    assert declared(prod, EGRESS) == mirror(expected) | DOWNLOADS
    assert not {(g, p) for g, p, peer in declared(prod, INGRESS) if g == NODES
                and peer == CP}  # seed 001: the control plane never dials a node


def test_ssh_tunnel_matrix_opens_ssh_to_nodes_and_shuts_the_kubelet_port(
        two_per_zone: Evaluation) -> None:
    expected = COMMON_INGRESS | SSH_TUNNEL_INGRESS | workloads(two_per_zone)
    ingress = declared(two_per_zone, INGRESS)
    assert ingress == expected
    assert (NODES, 10250, CP) not in ingress and (CP, 8132, NODES) not in ingress
    assert declared(two_per_zone, EGRESS) == mirror(expected) | DOWNLOADS


def test_only_admin_ssh_and_the_regional_api_port_admit_outside_addresses(
        stacks: list[Evaluation]) -> None:
    for ev in stacks:
        inside = ip_network(vpc(ev))
        outside = {(g, p) for g, p, peer in declared(ev, INGRESS)
                   if "/" in peer and not ip_network(peer).subnet_of(inside)}
        assert outside == {(BASTION, 22), (LBR, 6443)}
        assert not any(peer == "0.0.0.0/0" for _, _, peer in declared(ev, INGRESS))


def test_etcd_and_kubelet_ports_never_open_outside_the_control_plane(
        stacks: list[Evaluation]) -> None:
    for ev in stacks:
        for group, port, peer in declared(ev, INGRESS):
            if port in ETCD:
                assert (group, peer) == (CP, CP)
            if port == 10250:
                assert peer == CP


def test_groups_declare_no_inline_rules(prod: Evaluation) -> None:
    for sg in prod.of_type("aws:ec2/securityGroup:SecurityGroup"):
        assert "ingress" not in sg.inputs and "egress" not in sg.inputs
        assert sg.inputs["revokeRulesOnDelete"] is True


def test_instances_and_balancers_use_their_own_group(prod: Evaluation) -> None:
    names = {sg.id: sg.name for sg in prod.of_type("aws:ec2/securityGroup:SecurityGroup")}
    for inst in prod.of_type("aws:ec2/instance:Instance"):
        role = inst.inputs["tags"].get("multizone/role", "bastion")
        assert [names[g] for g in inst.inputs["vpcSecurityGroupIds"]] == [f"security-{role}"]
    for lt in prod.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        assert [names[g] for g in lt.inputs["vpcSecurityGroupIds"]] == ["security-nodes"]
    lbs = prod.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert sorted(lb.inputs["tags"]["multizone/endpoint"] for lb in lbs) == ["regional",
                                                                             "zonal"]
    for lb in lbs:
        kind = {"regional": LBR, "zonal": LBZ}[lb.inputs["tags"]["multizone/endpoint"]]
        assert [names[g] for g in lb.inputs["securityGroups"]] == [f"security-{kind}"]


def test_health_checks_and_api_traffic_pass_every_balancer(stacks: list[Evaluation],
                                                           two_per_zone: Evaluation) -> None:
    """For each balancer, the port its targets are checked and reached on is open from the
    balancer's group to the control plane both ways (a network load balancer's health checks
    obey its group's egress rules; the targets' ingress must admit the group), and its
    listener port admits its clients."""
    for ev in (*stacks, two_per_zone):
        ingress, egress = declared(ev, INGRESS), declared(ev, EGRESS)
        groups = {sg.id: sg.name.removeprefix("security-")
                  for sg in ev.of_type("aws:ec2/securityGroup:SecurityGroup")}
        listeners = ev.of_type("aws:lb/listener:Listener")
        for lb in ev.of_type("aws:lb/loadBalancer:LoadBalancer"):
            (group,) = [groups[g] for g in lb.inputs["securityGroups"]]
            for listener in [li for li in listeners if li.inputs["loadBalancerArn"] == lb.id]:
                _check_listener(ev, listener, group, ingress, egress, groups)


def _check_listener(ev: Evaluation, listener, group: str,  # type: ignore[no-untyped-def]
                    ingress, egress, groups) -> None:
    """One listener: its clients admitted, its targets' port and health-check port open
    from the balancer's group both ways, every target a control-plane host."""
    port = int(listener.inputs["port"])
    clients = {peer for g, p, peer in ingress if (g, p) == (group, port)}
    want = {NODES} if port == 8132 else {NODES, CP} if group == LBZ else {ADMIN}
    assert clients == want
    for action in listener.inputs["defaultActions"]:
        tg = ev.by_id(action["targetGroupArn"])
        hc = tg.inputs["healthCheck"]
        checked = int(tg.inputs["port"]) if hc["port"] == "traffic-port" \
            else int(hc["port"])
        for p in {checked, int(tg.inputs["port"])}:
            assert (CP, p, group) in ingress and (group, p, CP) in egress
        for att in ev.of_type("aws:lb/targetGroupAttachment:TargetGroupAttachment"):
            if att.inputs["targetGroupArn"] == tg.id:
                host = ev.by_id(att.inputs["targetId"])
                assert [groups[g] for g in host.inputs["vpcSecurityGroupIds"]] == [CP]
