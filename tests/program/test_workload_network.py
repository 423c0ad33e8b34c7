"""What the cluster's workloads get on AWS, read back from the declared resources and
replayed into moto: the pod network's VXLAN between nodes, NodePorts and kube-proxy's health
check from inside the VPC only, nothing from the control plane to the kubelet, and the EBS CSI
driver's IAM permissions on the nodes' role, scoped by the tags the stack really sets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")  # moto's fake credentials
os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")

from moto import mock_aws  # noqa: E402

from tests.program.mocks import Evaluation  # noqa: E402
from tests.program.moto_replay import Replay  # noqa: E402

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
CP, NODES, BASTION, LBZ = "control-plane", "nodes", "bastion", "lb-zonal"
NODE_PORTS = (30000, 32767)
Row = tuple[str, str, int, int, str]  # group, protocol, first port, last port, peer


def vpc_cidr(ev: Evaluation) -> str:
    (vpc,) = ev.of_type("aws:ec2/vpc:Vpc")
    return str(vpc.inputs["cidrBlock"])


def rows(ev: Evaluation, typ: str) -> dict[Row, str]:
    """Every declared rule as (group, protocol, from, to, peer) -> its description; peers by
    group name or CIDR."""
    names = {sg.id: sg.name.removeprefix("security-")
             for sg in ev.of_type("aws:ec2/securityGroup:SecurityGroup")}
    out = {}
    for rule in ev.of_type(typ):
        i = rule.inputs
        peer = names[i["referencedSecurityGroupId"]] if "referencedSecurityGroupId" in i \
            else i["cidrIpv4"]
        row = (names[i["securityGroupId"]], i["ipProtocol"], int(i["fromPort"]),
               int(i["toPort"]), peer)
        assert row not in out, row
        out[row] = i["description"]
    return out


def workload_ingress(ev: Evaluation) -> dict[Row, str]:
    cidr = vpc_cidr(ev)
    return {
        (NODES, "udp", 8472, 8472, NODES): "VXLAN",
        (NODES, "tcp", *NODE_PORTS, cidr): "NodePorts",
        (NODES, "udp", *NODE_PORTS, cidr): "NodePorts",
        (NODES, "tcp", 10256, 10256, cidr): "kube-proxy health check",
    }


@pytest.fixture(scope="module")
def evaluations(stacks: list[Evaluation], two_per_zone: Evaluation) -> list[Evaluation]:
    """prod, test and dev (Konnectivity egress) and prod with SSH-tunnel egress."""
    return [*stacks, two_per_zone]


def test_each_workload_rule_exists_with_its_peer_and_says_why(
        evaluations: list[Evaluation]) -> None:
    for ev in evaluations:
        ingress = rows(ev, INGRESS)
        for row, words in workload_ingress(ev).items():
            assert row in ingress, (ev.stack, row)
            assert words in ingress[row]  # the description says what it is for


def test_the_overlay_is_node_to_node_both_ways_and_nothing_else_uses_its_port(
        evaluations: list[Evaluation]) -> None:
    for ev in evaluations:
        for typ in (INGRESS, EGRESS):
            vxlan = {r for r in rows(ev, typ) if r[1] == "udp" and r[2] <= 8472 <= r[3]}
            assert vxlan == {(NODES, "udp", 8472, 8472, NODES)}, (ev.stack, typ)


def test_nodes_admit_exactly_the_design(prod: Evaluation, two_per_zone: Evaluation) -> None:
    """Bootstrap SSH, the workload rules, and SSH from the control plane only with SSH-tunnel
    egress: nothing else reaches a node (in particular not the kubelet port)."""
    ssh = {(NODES, "tcp", 22, 22, BASTION)}
    for ev, egress_extra in ((prod, set()), (two_per_zone, {(NODES, "tcp", 22, 22, CP)})):
        to_nodes = {r for r in rows(ev, INGRESS) if r[0] == NODES}
        assert to_nodes == ssh | set(workload_ingress(ev)) | egress_extra, ev.stack


def test_no_outside_address_and_no_address_beyond_the_vpc_reaches_a_node(
        evaluations: list[Evaluation]) -> None:
    for ev in evaluations:
        vpc = ip_network(vpc_cidr(ev))
        for group, _, first, last, peer in rows(ev, INGRESS):
            assert peer != "0.0.0.0/0", (group, first, peer)
            if group == NODES and "/" in peer:
                assert ip_network(peer) == vpc, (ev.stack, first, last, peer)


def test_the_control_plane_never_reaches_a_kubelet_on_a_node(
        stacks: list[Evaluation], two_per_zone: Evaluation) -> None:
    """Seed 001: the API server reaches nodes through its egress path only. Konnectivity
    (every shipped stack): nothing at all from the control plane to nodes, either way round;
    SSH-tunnel: port 22 only."""
    ssh: set[Row] = {(NODES, "tcp", 22, 22, CP)}
    for ev, allowed in [*((ev, set()) for ev in stacks), (two_per_zone, ssh)]:
        ingress, egress = rows(ev, INGRESS), rows(ev, EGRESS)
        from_cp = {r for r in ingress if r[0] == NODES and r[4] == CP}
        cp_sends = {(r[4], r[1], r[2], r[3], r[0]) for r in egress
                    if r[0] == CP and r[4] == NODES}
        assert from_cp == cp_sends == allowed, ev.stack
        assert not [r for r in from_cp if r[2] <= 10250 <= r[3]]


def test_nodes_reach_the_control_plane_as_before(prod: Evaluation) -> None:
    """What nodes already had: the API port through their zone's balancer (and at the hosts,
    which see the nodes' own addresses), Konnectivity agents' 8132 likewise; unchanged."""
    ingress, egress = rows(prod, INGRESS), rows(prod, EGRESS)
    for group in (CP, LBZ):
        for port in (6443, 8132):
            assert (group, "tcp", port, port, NODES) in ingress
            assert (NODES, "tcp", port, port, group) in egress


def test_every_rule_is_one_protocol_with_a_description(evaluations: list[Evaluation]) -> None:
    for ev in evaluations:
        for typ in (INGRESS, EGRESS):
            for (_, protocol, first, last, _), why in rows(ev, typ).items():
                assert protocol in ("tcp", "udp") and first <= last and why


# --------------------------------------------------------------------------- moto


@pytest.fixture(scope="module")
def replay(prod: Evaluation) -> Iterator[Replay]:
    with mock_aws():
        yield Replay(prod).run()


def test_the_workload_rules_survive_the_round_trip_through_ec2(
        replay: Replay, prod: Evaluation) -> None:
    """moto holds the rules as EC2 would: the nodes' group admits UDP 8472 from itself and
    the NodePort range from the VPC's CIDR, and no permission of it names 0.0.0.0/0."""
    (nodes,) = replay.ec2.describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["security-nodes"]}])["SecurityGroups"]
    cidr = vpc_cidr(prod)
    found = set()
    for perm in nodes["IpPermissions"]:
        key = (perm["IpProtocol"], perm["FromPort"], perm["ToPort"])
        found |= {(*key, "self") for p in perm.get("UserIdGroupPairs", [])
                  if p["GroupId"] == nodes["GroupId"]}
        found |= {(*key, r["CidrIp"]) for r in perm.get("IpRanges", [])}
    assert {("udp", 8472, 8472, "self"), ("tcp", *NODE_PORTS, cidr), ("udp", *NODE_PORTS, cidr),
            ("tcp", 10256, 10256, cidr)} <= found
    assert not [f for f in found if f[3] == "0.0.0.0/0"]
    out = {(p["IpProtocol"], p["FromPort"]) for p in nodes["IpPermissionsEgress"]}
    assert ("udp", 8472) in out


# --------------------------------------------------------------------------- IAM

MUTATING = ("ec2:CreateVolume", "ec2:CreateTags", "ec2:AttachVolume", "ec2:DetachVolume",
            "ec2:ModifyVolume", "ec2:DeleteVolume")


def ebs_policy(ev: Evaluation) -> dict[str, Any]:
    (policy,) = [p for p in ev.of_type("aws:iam/rolePolicy:RolePolicy")
                 if p.name == "nodes-ebs-csi"]
    return dict(json.loads(policy.inputs["policy"]))


def statements_with(document: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in document["Statement"]
            if action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]


def test_the_policy_is_on_the_role_of_the_nodes_instance_profile(
        evaluations: list[Evaluation]) -> None:
    for ev in evaluations:
        (policy,) = [p for p in ev.of_type("aws:iam/rolePolicy:RolePolicy")
                     if p.name == "nodes-ebs-csi"]
        role = ev.by_id(policy.inputs["role"])
        (profile,) = [p for p in ev.of_type("aws:iam/instanceProfile:InstanceProfile")
                      if p.inputs["role"] == role.outputs["name"]]
        templates = ev.of_type("aws:ec2/launchTemplate:LaunchTemplate")
        assert len(templates) == len(ev.of_type("aws:autoscaling/group:Group")) > 0
        for template in templates:
            assert template.inputs["iamInstanceProfile"]["arn"] == profile.outputs["arn"]
        # The control plane's role gets none of it.
        for other in ev.of_type("aws:iam/rolePolicy:RolePolicy"):
            if other is not policy:
                assert not [a for a in MUTATING if a in other.inputs["policy"]]


def test_nothing_mutates_without_a_condition_and_nothing_is_a_wildcard(
        evaluations: list[Evaluation]) -> None:
    for ev in evaluations:
        document = ebs_policy(ev)
        assert document["Version"] == "2012-10-17"
        for statement in document["Statement"]:
            actions = [statement["Action"]] if isinstance(statement["Action"], str) \
                else statement["Action"]
            assert statement["Effect"] == "Allow"
            assert not [a for a in actions if "*" in a]  # no ec2:*, no Describe*
            mutating = [a for a in actions if not a.startswith("ec2:Describe")]
            if statement["Resource"] == "*":
                assert not mutating, statement
            if mutating:
                assert statement["Condition"], statement
                assert statement["Resource"].startswith(f"arn:aws:ec2:{ev.mocks.region}:")
        granted = {a for s in document["Statement"] for a in
                   ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
        assert {a for a in granted if not a.startswith("ec2:Describe")} == set(MUTATING)


def conditions(statement: dict[str, Any]) -> dict[str, str]:
    (only,) = statement["Condition"].items()
    assert only[0] == "StringEquals"
    return dict(only[1])


def test_each_mutation_is_scoped_by_the_tags(prod: Evaluation) -> None:
    document, cluster = ebs_policy(prod), "mz-prod"
    cluster_tag = f"kubernetes.io/cluster/{cluster}"
    (create,) = statements_with(document, "ec2:CreateVolume")
    assert create["Resource"].endswith(":volume/*")
    assert conditions(create) == {f"aws:RequestTag/{cluster_tag}": "owned",
                                  "aws:RequestTag/ebs.csi.aws.com/cluster-name": cluster}
    (tag,) = statements_with(document, "ec2:CreateTags")
    assert conditions(tag) == {"ec2:CreateAction": "CreateVolume"}
    for action in ("ec2:ModifyVolume", "ec2:DeleteVolume"):
        (statement,) = statements_with(document, action)
        assert statement["Resource"].endswith(":volume/*")
        assert conditions(statement) == {
            f"ec2:ResourceTag/{cluster_tag}": "owned",
            "ec2:ResourceTag/ebs.csi.aws.com/cluster-name": cluster}
    for action in ("ec2:AttachVolume", "ec2:DetachVolume"):
        scoped = {s["Resource"].rsplit(":", 1)[1]: conditions(s)
                  for s in statements_with(document, action)}
        assert set(scoped) == {"volume/*", "instance/*"}
        assert scoped["instance/*"] == {f"ec2:ResourceTag/{cluster_tag}": "owned",
                                        "ec2:ResourceTag/mzk:cluster": cluster,
                                        "ec2:ResourceTag/mzk:role": "node"}
    (describe,) = [s for s in document["Statement"] if s["Resource"] == "*"]
    assert "Condition" not in describe
    assert all(a.startswith("ec2:Describe") for a in describe["Action"])


def matches(condition: dict[str, str], tags: dict[str, str]) -> bool:
    return all(tags.get(key.split("/", 1)[1]) == value for key, value in condition.items())


def test_the_conditions_match_the_nodes_and_nothing_else_the_stack_makes(
        prod: Evaluation) -> None:
    """Against the tags the program really sets: every node matches the instance scope, no
    control-plane host or bastion does; no volume of the stack (etcd, root volumes) matches
    the volume scope, though they all carry the cluster tag."""
    document = ebs_policy(prod)
    by_resource = {s["Resource"].rsplit(":", 1)[1]: conditions(s)
                   for s in statements_with(document, "ec2:AttachVolume")}
    for template in prod.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        specs = {s["resourceType"]: s["tags"] for s in template.inputs["tagSpecifications"]}
        assert matches(by_resource["instance/*"], specs["instance"])
        assert not matches(by_resource["volume/*"], specs["volume"])
    for instance in prod.of_type("aws:ec2/instance:Instance"):
        assert "kubernetes.io/cluster/mz-prod" in instance.inputs["tags"]
        assert not matches(by_resource["instance/*"], instance.inputs["tags"])
    volumes = prod.of_type("aws:ebs/volume:Volume")
    assert volumes
    for volume in volumes:
        assert volume.inputs["tags"]["kubernetes.io/cluster/mz-prod"] == "owned"
        assert not matches(by_resource["volume/*"], volume.inputs["tags"])


def test_iam_accepts_the_policy_document(prod: Evaluation) -> None:
    """moto's IAM checks a policy's grammar (version, effects, actions, ARNs, conditions)."""
    import boto3

    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        (role,) = [r for r in prod.of_type("aws:iam/role:Role") if r.name == "nodes-role"]
        iam.create_role(RoleName="nodes",
                        AssumeRolePolicyDocument=role.inputs["assumeRolePolicy"])
        iam.put_role_policy(RoleName="nodes", PolicyName="ebs-csi",
                            PolicyDocument=json.dumps(ebs_policy(prod)))
        stored = iam.get_role_policy(RoleName="nodes", PolicyName="ebs-csi")["PolicyDocument"]
        assert stored == ebs_policy(prod)
        with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
            broken = ebs_policy(prod)
            broken["Statement"][0]["Effect"] = "Permit"
            iam.put_role_policy(RoleName="nodes", PolicyName="broken",
                                PolicyDocument=json.dumps(broken))
