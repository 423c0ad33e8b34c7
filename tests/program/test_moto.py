"""Cross-check against an AWS model: the prod stack's EC2, ELBv2, Route 53 and Auto Scaling
resources, replayed into moto from the same inputs, are all accepted and consistent."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")  # moto's fake credentials
os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")

from moto import mock_aws  # noqa: E402

from tests.program.mocks import Evaluation  # noqa: E402
from tests.program.moto_replay import Replay  # noqa: E402

NOT_REPLAYED = {  # IAM and Pulumi's own types: outside the services under test
    "aws:iam/role:Role", "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/instanceProfile:InstanceProfile", "pulumi-python:dynamic/multizone:HostKey",
    "pulumi-python:dynamic/multizone:ClusterBootstrap",
    "pulumi-python:dynamic/multizone:ControlPlaneRollout",
}


@pytest.fixture(scope="module")
def replay(prod: Evaluation) -> Iterator[Replay]:
    with mock_aws():
        yield Replay(prod).run()


def test_moto_accepts_every_resource(replay: Replay) -> None:
    skipped = {t for t in replay.skipped if not t.startswith("multizone:components:")}
    assert skipped == NOT_REPLAYED


def test_subnets_lie_inside_the_vpc_one_pair_per_zone(replay: Replay) -> None:
    (vpc,) = replay.ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": ["10.0.0.0/16"]}])[
        "Vpcs"]
    subnets = replay.ec2.describe_subnets(Filters=[{"Name": "vpc-id",
                                                    "Values": [vpc["VpcId"]]}])["Subnets"]
    assert len(subnets) == 6
    assert sorted(s["AvailabilityZone"] for s in subnets) == sorted(
        ["eu-west-1a", "eu-west-1b", "eu-west-1c"] * 2)


def _behind(replay: Replay, lb: dict, port: int = 6443
            ) -> tuple[dict, dict[str, str], set[str]]:
    """A balancer's listener on `port`: its target group, that group's attributes, and the
    zones of the instances registered in it."""
    elb, ec2 = replay.elbv2, replay.ec2
    (listener,) = [li for li in elb.describe_listeners(
        LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"] if li["Port"] == port]
    assert listener["Protocol"] == "TCP"
    (action,) = listener["DefaultActions"]
    (group,) = elb.describe_target_groups(TargetGroupArns=[action["TargetGroupArn"]])[
        "TargetGroups"]
    assert group["VpcId"] == lb["VpcId"] and group["Port"] == port
    attrs = {a["Key"]: a["Value"] for a in elb.describe_target_group_attributes(
        TargetGroupArn=group["TargetGroupArn"])["Attributes"]}
    health = elb.describe_target_health(TargetGroupArn=group["TargetGroupArn"])[
        "TargetHealthDescriptions"]
    ids = [t["Target"]["Id"] for t in health]
    instances = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
                 for i in r["Instances"]]
    assert len(instances) == len(ids) == 3
    return group, attrs, {i["Placement"]["AvailabilityZone"] for i in instances}


def test_balancers_health_check_readyz_and_fail_over_across_zones(replay: Replay) -> None:
    elb = replay.elbv2
    lbs = elb.describe_load_balancers()["LoadBalancers"]
    assert len(lbs) == 2
    policies = {}
    for lb in lbs:
        lb_zones = {z["ZoneName"] for z in lb["AvailabilityZones"]}
        assert lb_zones == {"eu-west-1a", "eu-west-1b", "eu-west-1c"}
        lb_attrs = {a["Key"]: a["Value"] for a in elb.describe_load_balancer_attributes(
            LoadBalancerArn=lb["LoadBalancerArn"])["Attributes"]}
        group, attrs, target_zones = _behind(replay, lb)
        assert target_zones == lb_zones  # every zone's hosts, so failover has somewhere to go
        assert (group["HealthCheckProtocol"], group["HealthCheckPath"],
                group["Matcher"]["HttpCode"]) == ("HTTPS", "/readyz", "200")
        policy = lb_attrs.get("dns_record.client_routing_policy", "any_availability_zone")
        policies[policy] = lb
        if policy == "availability_zone_affinity":
            assert lb["Scheme"] == "internal"
            assert lb_attrs["load_balancing.cross_zone.enabled"] == "false"
            assert attrs["load_balancing.cross_zone.enabled"] == "false"
            assert attrs["target_group_health.dns_failover.minimum_healthy_targets.count"] \
                == "1"
            # Konnectivity agents (prod: konnectivity) reach every zone's server from here.
            agents, agent_attrs, agent_zones = _behind(replay, lb, 8132)
            assert agent_zones == lb_zones
            assert agent_attrs["load_balancing.cross_zone.enabled"] == "true"
            assert (agents["HealthCheckProtocol"], agents["HealthCheckPort"],
                    agents["HealthCheckPath"]) == ("HTTP", "8134", "/healthz")
        else:
            assert lb_attrs["load_balancing.cross_zone.enabled"] == "true"
    assert set(policies) == {"availability_zone_affinity", "any_availability_zone"}


def test_each_zone_name_resolves_to_the_zone_endpoint_balancer(replay: Replay) -> None:
    r53, elb = replay.route53, replay.elbv2
    (zone,) = r53.list_hosted_zones()["HostedZones"]
    assert zone["Name"] == "mz-prod.internal." and zone["Config"]["PrivateZone"] is True
    (vpc,) = replay.ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": ["10.0.0.0/16"]}])[
        "Vpcs"]
    assert r53.get_hosted_zone(Id=zone["Id"])["VPCs"] == [
        {"VPCRegion": "eu-west-1", "VPCId": vpc["VpcId"]}]
    records = {r["Name"]: r for r in r53.list_resource_record_sets(
        HostedZoneId=zone["Id"])["ResourceRecordSets"] if r["Type"] == "CNAME"}
    assert sorted(records) == [f"api-{z}.mz-prod.internal." for z in "abc"]
    affine = {lb["DNSName"] for lb in elb.describe_load_balancers()["LoadBalancers"]
              if {"Key": "dns_record.client_routing_policy",
                  "Value": "availability_zone_affinity"} in elb.describe_load_balancer_attributes(
                  LoadBalancerArn=lb["LoadBalancerArn"])["Attributes"]}
    assert len(affine) == 1
    for record in records.values():
        assert [v["Value"] for v in record["ResourceRecords"]] == list(affine)


def test_etcd_volumes_are_encrypted_and_attached_in_zone(replay: Replay) -> None:
    volumes = replay.ec2.describe_volumes(Filters=[{"Name": "tag:Name",
                                                    "Values": ["*-etcd"]}])["Volumes"]
    assert len(volumes) == 3
    for volume in volumes:
        assert volume["Encrypted"] is True
        (attachment,) = volume["Attachments"]
        (res,) = replay.ec2.describe_instances(InstanceIds=[attachment["InstanceId"]])[
            "Reservations"]
        assert res["Instances"][0]["Placement"]["AvailabilityZone"] == \
            volume["AvailabilityZone"]


def test_groups_launch_nodes_from_their_template_in_their_zone(replay: Replay) -> None:
    groups = replay.asg.describe_auto_scaling_groups()["AutoScalingGroups"]
    assert len(groups) == 3
    for group in groups:
        zone = {t["Key"]: t["Value"] for t in group["Tags"]}["multizone/zone"]
        assert group["AvailabilityZones"] == [zone]
        assert len(group["Instances"]) == group["DesiredCapacity"] == 3
        assert {i["AvailabilityZone"] for i in group["Instances"]} == {zone}
        assert group["LaunchTemplate"]["LaunchTemplateId"]


def test_node_templates_keep_the_identity_document_from_pods(replay: Replay) -> None:
    """IMDSv2 only, one hop (a container is a second hop), no tags in the metadata: what EC2
    stores for each pool's template, as the program gave it."""
    templates = replay.ec2.describe_launch_templates()["LaunchTemplates"]
    assert len(templates) == 3
    for template in templates:
        (version,) = replay.ec2.describe_launch_template_versions(
            LaunchTemplateId=template["LaunchTemplateId"])["LaunchTemplateVersions"]
        options = version["LaunchTemplateData"]["MetadataOptions"]
        assert options["HttpTokens"] == "required"
        assert options["HttpPutResponseHopLimit"] == 1
        assert options["InstanceMetadataTags"] == "disabled"


def test_the_matrix_survives_the_round_trip(replay: Replay) -> None:
    groups = replay.ec2.describe_security_groups(Filters=[{"Name": "group-name",
                                                           "Values": ["security-*"]}])
    by_name = {g["GroupName"]: g for g in groups["SecurityGroups"]}
    assert len(by_name) == 5
    ingress = sum(len(p.get("IpRanges", [])) + len(p.get("UserIdGroupPairs", []))
                  for g in by_name.values() for p in g["IpPermissions"])
    assert ingress == 22  # prod, konnectivity: security.matrix() row for row
    for g in by_name.values():
        for perm in g["IpPermissionsEgress"]:
            # the default allow-all egress ("-1") is gone; UDP only for the overlay
            assert perm["IpProtocol"] == "tcp" or (perm["IpProtocol"], perm["FromPort"]) == (
                "udp", 8472)


def test_moto_refuses_a_subnet_outside_the_vpc(prod: Evaluation) -> None:
    """The replay is a real check: a tampered subnet is refused by the model."""
    import copy

    from botocore.exceptions import ClientError

    tampered = copy.copy(prod)
    tampered.mocks = copy.copy(prod.mocks)
    tampered.mocks.resources = [copy.deepcopy(r) for r in prod.resources]
    subnet = next(r for r in tampered.resources if r.typ == "aws:ec2/subnet:Subnet")
    subnet.inputs["cidrBlock"] = "10.9.0.0/24"
    with mock_aws(), pytest.raises(ClientError, match="InvalidSubnet.Range"):
        Replay(tampered).run()


def test_moto_refuses_a_zone_name_outside_the_hosted_zone(replay: Replay) -> None:
    """Route 53 in the model checks the records: the replay of a zone's record, renamed to
    a name outside the private hosted zone, is refused."""
    import copy

    from botocore.exceptions import ClientError

    record = copy.deepcopy(next(r for r in replay.ev.resources
                                if r.typ == "aws:route53/record:Record"))
    record.inputs["name"] = "api-a.elsewhere.internal"
    with pytest.raises(ClientError, match="InvalidChangeBatch"):
        replay._Record(record, record.inputs)
