"""Policies on placement: three zones, hosts in their own zone, API endpoints that prefer
the client's zone and fail over to the others."""

from __future__ import annotations

import ipaddress

import pulumi
import pytest

from bootstrap.node import kubelet_config as kc
from bootstrap.services import unit_path
from tests.program.mocks import AwsMocks, Evaluation, program
from tests.program.stackconfig import stack_config
from tests.program.test_node_join import user_data_of, written_files

INSTANCE, SUBNET = "aws:ec2/instance:Instance", "aws:ec2/subnet:Subnet"
LB, TG = "aws:lb/loadBalancer:LoadBalancer", "aws:lb/targetGroup:TargetGroup"
ATTACH, LISTENER = "aws:lb/targetGroupAttachment:TargetGroupAttachment", "aws:lb/listener:Listener"
HOSTED_ZONE, RECORD = "aws:route53/zone:Zone", "aws:route53/record:Record"
ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
ALL_STACKS = ["prod", "test_stack", "dev", "two_per_zone"]


def control_plane(ev: Evaluation) -> list:
    return [i for i in ev.of_type(INSTANCE) if i.inputs["tags"].get("multizone/role")
            == "control-plane"]


def balancers(ev: Evaluation, endpoint: str) -> list:
    """The load balancers serving `endpoint` ("zonal" or "regional"), by their tag."""
    return [lb for lb in ev.of_type(LB) if lb.inputs["tags"]["multizone/endpoint"] == endpoint]


def target_groups(ev: Evaluation, lb, port: int = 6443) -> list:
    """The target groups a load balancer's listeners on `port` forward to."""
    arns = {a["targetGroupArn"] for li in ev.of_type(LISTENER)
            if li.inputs["loadBalancerArn"] == lb.id and int(li.inputs["port"]) == port
            for a in li.inputs["defaultActions"]}
    return [ev.by_id(arn) for arn in sorted(arns)]


def targets(ev: Evaluation, lb, port: int = 6443) -> list:
    """The instances behind a load balancer: listener -> target group -> attachments."""
    groups = {tg.id for tg in target_groups(ev, lb, port)}
    return [ev.by_id(a.inputs["targetId"]) for a in ev.of_type(ATTACH)
            if a.inputs["targetGroupArn"] in groups]


def lb_zones(ev: Evaluation, lb) -> set[str]:
    return {ev.by_id(s).outputs["availabilityZone"] for s in lb.inputs["subnets"]}


@pytest.mark.parametrize("name", ["prod", "test_stack", "dev", "two_per_zone"])
def test_three_zones_one_public_and_one_private_subnet_each(name: str, request) -> None:
    ev: Evaluation = request.getfixturevalue(name)
    subnets = ev.of_type(SUBNET)
    zones = sorted({s.outputs["availabilityZone"] for s in subnets})
    assert zones == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    for zone in zones:
        kinds = sorted(s.inputs["tags"]["Name"].split("-")[-4] for s in subnets
                       if s.outputs["availabilityZone"] == zone)
        assert kinds == ["private", "public"]


@pytest.mark.parametrize(("name", "per_zone"), [("prod", 1), ("two_per_zone", 2)])
def test_every_control_plane_host_is_in_its_own_zones_private_subnet(
        name: str, per_zone: int, request) -> None:
    ev: Evaluation = request.getfixturevalue(name)
    hosts = control_plane(ev)
    assert len(hosts) == 3 * per_zone
    for host in hosts:
        subnet = ev.by_id(host.inputs["subnetId"])
        zone = host.inputs["tags"]["multizone/zone"]
        assert subnet.outputs["availabilityZone"] == zone == host.outputs["availabilityZone"]
        assert subnet.inputs["tags"].get("kubernetes.io/role/internal-elb") == "1"  # private
        assert not host.inputs.get("associatePublicIpAddress")
        assert ipaddress.ip_address(host.outputs["privateIp"]) in \
            ipaddress.ip_network(subnet.inputs["cidrBlock"])


def test_only_the_bastion_has_a_public_address(prod: Evaluation) -> None:
    public = [i for i in prod.of_type(INSTANCE) if i.inputs.get("associatePublicIpAddress")]
    assert [i.name for i in public] == ["bastion-eu-west-1a"]
    assert prod.by_id(public[0].inputs["subnetId"]).inputs["tags"]["kubernetes.io/role/elb"]


@pytest.mark.parametrize("name", ALL_STACKS)
def test_the_zone_endpoint_balancer_keeps_clients_in_their_zone_and_fails_over(
        name: str, request) -> None:
    """One internal NLB with a node in every zone's private subnet; cross-zone off (balancer
    and target group), so a node forwards only to its zone's hosts; DNS answers a client
    with its own zone's node; a zone without a ready target is taken out of DNS."""
    ev: Evaluation = request.getfixturevalue(name)
    (lb,) = balancers(ev, "zonal")
    assert lb.inputs["loadBalancerType"] == "network" and lb.inputs["internal"] is True
    assert lb_zones(ev, lb) == set(ZONES)
    for subnet in lb.inputs["subnets"]:
        assert ev.by_id(subnet).inputs["tags"].get("kubernetes.io/role/internal-elb") == "1"
    assert lb.inputs["enableCrossZoneLoadBalancing"] is False
    assert lb.inputs["dnsRecordClientRoutingPolicy"] == "availability_zone_affinity"
    (tg,) = target_groups(ev, lb)  # the API port's
    assert tg.inputs["loadBalancingCrossZoneEnabled"] == "false"
    assert tg.inputs["targetGroupHealth"]["dnsFailover"]["minimumHealthyTargetsCount"] == "1"


@pytest.mark.parametrize(("name", "per_zone"), [("prod", 1), ("two_per_zone", 2)])
def test_every_control_plane_host_is_a_target_of_the_zone_endpoint_balancer(
        name: str, per_zone: int, request) -> None:
    """Failover needs somewhere to go: each zone has its own hosts behind the balancer (so
    it is preferred) and the other zones' hosts too (so losing it is survivable)."""
    ev: Evaluation = request.getfixturevalue(name)
    (lb,) = balancers(ev, "zonal")
    behind = targets(ev, lb)
    assert sorted(t.id for t in behind) == sorted(h.id for h in control_plane(ev))
    for zone in lb_zones(ev, lb):
        here = [t for t in behind if t.outputs["availabilityZone"] == zone]
        elsewhere = [t for t in behind if t.outputs["availabilityZone"] != zone]
        assert len(here) == per_zone and len(elsewhere) == 2 * per_zone
    # With cross-zone off, a target in a zone where the balancer has no node gets nothing.
    assert {t.outputs["availabilityZone"] for t in behind} <= lb_zones(ev, lb)


@pytest.mark.parametrize("name", ALL_STACKS)
def test_every_api_target_group_health_checks_https_readyz(name: str, request) -> None:
    """An API server that accepts TCP but is not ready is out; `/readyz` answers 200 only
    when it is ready."""
    ev: Evaluation = request.getfixturevalue(name)
    groups = [tg for tg in ev.of_type(TG) if tg.inputs["port"] == 6443]
    assert len(groups) == 2
    behind = [tg.id for lb in ev.of_type(LB) for tg in target_groups(ev, lb)]
    assert sorted(behind) == sorted(tg.id for tg in groups)  # each group serves a balancer
    for tg in groups:
        assert tg.inputs["protocol"] == "TCP"
        hc = tg.inputs["healthCheck"]
        assert (hc["protocol"], hc["path"], hc["matcher"], hc["port"]) == \
            ("HTTPS", "/readyz", "200", "traffic-port")
        assert hc.get("enabled", True) is True
    api = {tg.id for tg in groups}
    for att in ev.of_type(ATTACH):
        assert (att.inputs["port"] == 6443) == (att.inputs["targetGroupArn"] in api)


@pytest.mark.parametrize("name", ALL_STACKS)
def test_konnectivity_agents_reach_every_server_through_their_zone_endpoint(
        name: str, request) -> None:
    """In konnectivity mode the zone-endpoint balancer carries 8132 to every control-plane
    host with cross-zone balancing on (an agent must hold every server, not only its
    zone's), checked on the servers' /healthz; in ssh-tunnel mode there is no such port."""
    ev: Evaluation = request.getfixturevalue(name)
    (lb,) = balancers(ev, "zonal")
    groups = target_groups(ev, lb, 8132)
    if name == "two_per_zone":  # the one ssh-tunnel stack (conftest); stacks/ say konnectivity
        assert groups == [] and not targets(ev, lb, 8132)
        return
    (tg,) = groups
    assert tg.inputs["loadBalancingCrossZoneEnabled"] == "true"
    hc = tg.inputs["healthCheck"]
    assert (hc["protocol"], hc["port"], hc["path"]) == ("HTTP", "8134", "/healthz")
    assert sorted(t.id for t in targets(ev, lb, 8132)) == sorted(
        h.id for h in control_plane(ev))
    for balancer in balancers(ev, "regional"):
        assert target_groups(ev, balancer, 8132) == []


@pytest.mark.parametrize("name", ALL_STACKS)
def test_each_zone_endpoint_name_resolves_to_the_zone_endpoint_balancer(
        name: str, request) -> None:
    """Zone X's kubelets are told zone X's name; that name is a record, in a private zone
    the VPC resolves, whose answer is the zone-endpoint balancer (not a zonal name of it,
    which would pin the zone and lose the failover)."""
    ev: Evaluation = request.getfixturevalue(name)
    (vpc,) = ev.of_type("aws:ec2/vpc:Vpc")
    (hosted,) = ev.of_type(HOSTED_ZONE)
    assert hosted.outputs["name"] == f"mz-{ev.stack}.internal"
    assert [v["vpcId"] for v in hosted.inputs["vpcs"]] == [vpc.id]
    (lb,) = balancers(ev, "zonal")
    endpoints = ev.outputs["zoneEndpoints"]
    assert sorted(endpoints) == list(ZONES)
    assert len(set(endpoints.values())) == len(ZONES)
    records = {r.outputs["fqdn"]: r for r in ev.of_type(RECORD)}
    assert len(records) == len(ZONES)
    for zone, endpoint in endpoints.items():
        assert endpoint == f"api-{zone[-1]}.{hosted.outputs['name']}"
        record = records[endpoint]
        assert record.inputs["zoneId"] == hosted.id
        assert record.inputs["type"] == "CNAME"
        assert record.inputs["records"] == [lb.outputs["dnsName"]]


@pytest.mark.parametrize("name", ["prod", "two_per_zone"])
def test_the_regional_load_balancer_targets_every_control_plane_host(name: str, request) -> None:
    ev: Evaluation = request.getfixturevalue(name)
    (regional,) = balancers(ev, "regional")
    assert lb_zones(ev, regional) == set(ZONES)
    assert regional.inputs["enableCrossZoneLoadBalancing"] is True
    assert regional.inputs.get("dnsRecordClientRoutingPolicy") is None
    (tg,) = target_groups(ev, regional)
    assert tg.inputs["loadBalancingCrossZoneEnabled"] == "true"
    assert sorted(t.id for t in targets(ev, regional)) == sorted(h.id for h in control_plane(ev))


def test_etcd_volumes_are_encrypted_and_beside_their_host(prod: Evaluation) -> None:
    volumes = prod.of_type("aws:ebs/volume:Volume")
    assert len(volumes) == 3
    assert all(v.inputs["encrypted"] is True for v in volumes)
    for att in prod.of_type("aws:ec2/volumeAttachment:VolumeAttachment"):
        volume, host = prod.by_id(att.inputs["volumeId"]), prod.by_id(att.inputs["instanceId"])
        assert volume.inputs["availabilityZone"] == host.outputs["availabilityZone"]
    for inst in prod.of_type(INSTANCE):
        assert inst.inputs["rootBlockDevice"]["encrypted"] is True
        assert inst.inputs["metadataOptions"]["httpTokens"] == "required"


def test_nat_gateway_per_zone_in_prod_and_one_in_test(prod: Evaluation,
                                                      test_stack: Evaluation) -> None:
    def nat_zones(ev: Evaluation) -> list[str]:
        return sorted(ev.by_id(n.inputs["subnetId"]).outputs["availabilityZone"]
                      for n in ev.of_type("aws:ec2/natGateway:NatGateway"))
    assert nat_zones(prod) == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    assert nat_zones(test_stack) == ["eu-west-1a"]
    # Every private subnet routes to a NAT gateway, in its own zone when there is one.
    for ev in (prod, test_stack):
        routes = [r for r in ev.of_type("aws:ec2/route:Route") if r.inputs.get("natGatewayId")]
        assert len(routes) == 3


def test_node_pools_one_group_per_zone_labelled_and_sized(prod: Evaluation) -> None:
    groups = prod.of_type("aws:autoscaling/group:Group")
    assert len(groups) == 3
    for group in groups:
        tags = {t["key"]: t["value"] for t in group.inputs["tags"]}
        zone = tags["multizone/zone"]
        (subnet,) = group.inputs["vpcZoneIdentifiers"]
        assert prod.by_id(subnet).outputs["availabilityZone"] == zone
        assert tags["k8s.io/cluster-autoscaler/node-template/label/topology.kubernetes.io/zone"] \
            == zone
        assert (group.inputs["minSize"], group.inputs["desiredCapacity"],
                group.inputs["maxSize"]) == (3, 3, 50)
        refresh = group.inputs["instanceRefresh"]
        assert refresh["strategy"] == "Rolling"
        assert refresh["preferences"]["minHealthyPercentage"] >= 90
        # The join script: the kubelet labels its node with the zone and asks its zone's
        # endpoint first (tests/program/test_node_join.py reads the rest of it).
        template = prod.by_id(group.inputs["launchTemplate"]["id"])
        files = written_files(user_data_of(template))
        assert f"--node-labels=topology.kubernetes.io/zone={zone}" in \
            files[unit_path("kubelet")].decode()
        endpoint = prod.outputs["zoneEndpoints"][zone]
        assert f"server: https://{endpoint}:6443\n" in \
            files[kc.BOOTSTRAP_KUBECONFIG].decode()


@pytest.fixture
def prod_under_fresh_mocks() -> AwsMocks:
    """Fresh AWS mocks and the prod stack's config, for a test that runs the program itself."""
    from pulumi.runtime import settings as runtime_settings

    mocks = AwsMocks()
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project="multizone-k8s", stack="prod", preview=False)
    pulumi.runtime.set_all_config(stack_config("prod"))
    return mocks


@pulumi.runtime.test
def test_zone_endpoint_outputs_are_the_names_of_records_on_the_balancer(
        prod_under_fresh_mocks: AwsMocks) -> pulumi.Output:
    """A decorated test on the program's own Outputs: the asserts run inside `apply`, and
    the Output is returned so that a failing assert fails the test."""
    mocks = prod_under_fresh_mocks
    outputs = program().main()

    def check(values: list) -> None:
        zone_endpoints, inventory = values
        (lb,) = [r for r in mocks.of_type(LB)
                 if r.inputs["tags"]["multizone/endpoint"] == "zonal"]
        records = {r.outputs["fqdn"]: r for r in mocks.of_type(RECORD)}
        assert sorted(zone_endpoints) == list(ZONES)
        for zone, name in zone_endpoints.items():
            assert records[name].inputs["records"] == [lb.outputs["dnsName"]]
            assert inventory["endpoints"]["zones"][zone] == {"name": name, "port": 6443}
        assert inventory["endpoints"]["regional"]["name"] != lb.outputs["dnsName"]

    return pulumi.Output.all(outputs["zoneEndpoints"], outputs["inventory"]).apply(check)
