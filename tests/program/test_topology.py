"""Policies on placement: three zones, hosts in their own zone, zonal load balancers."""

from __future__ import annotations

import ipaddress

import pytest

from tests.program.mocks import Evaluation

INSTANCE, SUBNET = "aws:ec2/instance:Instance", "aws:ec2/subnet:Subnet"
LB, TG = "aws:lb/loadBalancer:LoadBalancer", "aws:lb/targetGroup:TargetGroup"
ATTACH, LISTENER = "aws:lb/targetGroupAttachment:TargetGroupAttachment", "aws:lb/listener:Listener"


def control_plane(ev: Evaluation) -> list:
    return [i for i in ev.of_type(INSTANCE) if i.inputs["tags"].get("multizone/role")
            == "control-plane"]


def targets(ev: Evaluation, lb) -> list:
    """The instances behind a load balancer: listener -> target group -> attachments."""
    groups = {a["targetGroupArn"] for li in ev.of_type(LISTENER)
              if li.inputs["loadBalancerArn"] == lb.id for a in li.inputs["defaultActions"]}
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


@pytest.mark.parametrize("name", ["prod", "two_per_zone"])
def test_each_zonal_load_balancer_targets_only_its_zone(name: str, request) -> None:
    ev: Evaluation = request.getfixturevalue(name)
    zonal = [lb for lb in ev.of_type(LB) if lb.inputs["tags"]["multizone/zone"] != "regional"]
    assert len(zonal) == 3
    per_zone = ev.outputs["inventory"]["hosts"].__len__() // 3
    for lb in zonal:
        zone = lb.inputs["tags"]["multizone/zone"]
        assert lb_zones(ev, lb) == {zone}
        assert lb.inputs["internal"] is True
        assert lb.inputs["enableCrossZoneLoadBalancing"] is False
        behind = targets(ev, lb)
        assert len(behind) == per_zone
        assert {t.outputs["availabilityZone"] for t in behind} == {zone}


def test_zonal_target_groups_forward_to_the_api_port_without_cross_zone(prod: Evaluation) -> None:
    for tg in prod.of_type(TG):
        assert tg.inputs["port"] == 6443 and tg.inputs["protocol"] == "TCP"
        zonal = tg.inputs["tags"]["multizone/zone"] != "regional"
        assert tg.inputs["loadBalancingCrossZoneEnabled"] == ("false" if zonal else "true")
    for att in prod.of_type(ATTACH):
        assert att.inputs["port"] == 6443


@pytest.mark.parametrize("name", ["prod", "two_per_zone"])
def test_the_regional_load_balancer_targets_every_control_plane_host(name: str, request) -> None:
    ev: Evaluation = request.getfixturevalue(name)
    (regional,) = [lb for lb in ev.of_type(LB) if lb.inputs["tags"]["multizone/zone"] ==
                   "regional"]
    assert lb_zones(ev, regional) == {"eu-west-1a", "eu-west-1b", "eu-west-1c"}
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
        template = prod.by_id(group.inputs["launchTemplate"]["id"])
        import base64
        user_data = base64.b64decode(template.inputs["userData"]).decode()
        assert f"NODE_LABELS=topology.kubernetes.io/zone={zone}" in user_data
        endpoint = prod.outputs["zoneEndpoints"][zone]
        assert f"API_ENDPOINT=https://{endpoint}:6443" in user_data
