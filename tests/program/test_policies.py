"""Stack-wide policies: deletion protection, tags everywhere, secrets stay secret."""

from __future__ import annotations

import pulumi
import pytest

from tests.program.mocks import Evaluation

# Resource types that take no tags in AWS (or are not AWS resources); every other type
# the program declares must carry the cluster, stack and zone tags.
UNTAGGABLE = {
    "aws:ec2/route:Route", "aws:ec2/routeTableAssociation:RouteTableAssociation",
    "aws:iam/rolePolicy:RolePolicy", "aws:lb/targetGroupAttachment:TargetGroupAttachment",
    "aws:ec2/volumeAttachment:VolumeAttachment", "pulumi-python:dynamic/multizone:HostKey",
    "aws:route53/record:Record", "pulumi-python:dynamic/multizone:ClusterBootstrap",
    "pulumi-python:dynamic/multizone:ControlPlaneRollout",
}
STATEFUL = {"aws:ec2/vpc:Vpc", "aws:ec2/instance:Instance", "aws:ebs/volume:Volume",
            "aws:lb/loadBalancer:LoadBalancer"}


def tags_of(reg) -> dict[str, str]:
    tags = reg.inputs.get("tags")
    if isinstance(tags, list):  # auto scaling groups: [{key, value, propagateAtLaunch}]
        assert all(t["propagateAtLaunch"] for t in tags)
        return {t["key"]: t["value"] for t in tags}
    return tags or {}


def zone_of(ev: Evaluation, reg) -> str | None:
    """The zone AWS places a resource in, where it has one."""
    if "availabilityZone" in reg.outputs:
        return reg.outputs["availabilityZone"]
    for key in ("subnetId",):
        if key in reg.inputs:
            return ev.by_id(reg.inputs[key]).outputs["availabilityZone"]
    if reg.typ == "aws:autoscaling/group:Group":
        return ev.by_id(reg.inputs["vpcZoneIdentifiers"][0]).outputs["availabilityZone"]
    # Zonal through what uses them: a NAT gateway's address, a pool's launch template, a
    # route table associated with subnets of one zone.
    if reg.typ == "aws:ec2/eip:Eip":
        users = [r for r in ev.of_type("aws:ec2/natGateway:NatGateway")
                 if r.inputs.get("allocationId") == reg.outputs.get("allocationId")]
        return zone_of(ev, users[0]) if users else None
    if reg.typ == "aws:ec2/launchTemplate:LaunchTemplate":
        users = [r for r in ev.of_type("aws:autoscaling/group:Group")
                 if r.inputs.get("launchTemplate", {}).get("id") == reg.id]
        return zone_of(ev, users[0]) if users else None
    if reg.typ == "aws:ec2/routeTable:RouteTable":
        zones = {zone_of(ev, a) for a in ev.of_type(
            "aws:ec2/routeTableAssociation:RouteTableAssociation")
            if a.inputs.get("routeTableId") == reg.id}
        return zones.pop() if len(zones) == 1 else None
    return None


@pytest.mark.parametrize("name", ["prod", "test_stack", "dev"])
def test_every_taggable_resource_carries_cluster_stack_and_zone(name: str, request) -> None:
    ev: Evaluation = request.getfixturevalue(name)
    stack = ev.stack
    cluster = f"mz-{stack}"
    checked = 0
    for reg in ev.resources:
        if reg.typ.startswith("multizone:components:"):
            continue  # components are Pulumi's, not AWS's; their children are checked
        if reg.typ in UNTAGGABLE:
            assert "tags" not in reg.inputs
            continue
        tags = tags_of(reg)
        assert tags.get(f"kubernetes.io/cluster/{cluster}") == "owned", (reg.typ, reg.name)
        assert tags["multizone/cluster"] == cluster and tags["multizone/stack"] == stack
        # A resource AWS places in a zone names that zone; every other one is regional.
        assert tags["multizone/zone"] == (zone_of(ev, reg) or "regional"), (reg.typ, reg.name)
        checked += 1
    assert checked > 60


def test_the_test_stack_carries_an_expiry_tag(test_stack: Evaluation, prod: Evaluation) -> None:
    for reg in test_stack.resources:
        if reg.typ not in UNTAGGABLE and not reg.typ.startswith("multizone:components:"):
            assert tags_of(reg)["expires-at"] == "2026-12-31"
    assert not any("expires-at" in tags_of(r) for r in prod.resources)


def test_prod_is_protected_from_deletion(prod: Evaluation) -> None:
    assert all(reg.protect for reg in prod.resources), \
        [r.name for r in prod.resources if not r.protect]
    for inst in prod.of_type("aws:ec2/instance:Instance"):
        assert inst.inputs["disableApiTermination"] is True
    for lb in prod.of_type("aws:lb/loadBalancer:LoadBalancer"):
        assert lb.inputs["enableDeletionProtection"] is True
    assert {r.typ for r in prod.resources} >= STATEFUL


def test_the_test_stack_is_not_protected(test_stack: Evaluation) -> None:
    assert not any(reg.protect for reg in test_stack.resources)
    for inst in test_stack.of_type("aws:ec2/instance:Instance"):
        assert inst.inputs["disableApiTermination"] is False
    for lb in test_stack.of_type("aws:lb/loadBalancer:LoadBalancer"):
        assert lb.inputs["enableDeletionProtection"] is False


def test_user_data_holding_host_keys_is_sent_as_a_secret(prod: Evaluation) -> None:
    instances = prod.of_type("aws:ec2/instance:Instance")
    assert len(instances) == 4
    for inst in instances:
        assert "userData" in inst.secret_inputs
        assert "BEGIN OPENSSH PRIVATE KEY" in inst.inputs["userData"]
    for lt in prod.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        assert "PRIVATE KEY" not in lt.inputs["userData"]


def test_no_output_holds_a_private_key(prod: Evaluation) -> None:
    assert "PRIVATE KEY" not in repr(prod.outputs)
    # Only the admin kubeconfig (a client key) is secret; everything else is public data.
    assert {k for k, v in prod.secret_outputs.items() if v} == {"adminKubeconfig"}


def test_host_key_private_halves_are_secret_in_state(prod: Evaluation) -> None:
    """The engine keeps a value secret in state only if the resource says so
    (`additional_secret_outputs`); wrapping the Output in the program is not enough."""
    keys = {name: secrets for (typ, name), secrets in
            prod.monitor.additional_secret_outputs.items()
            if typ == "pulumi-python:dynamic/multizone:HostKey"}
    assert len(keys) >= 4  # the bastion and every control-plane host
    assert all("private_key" in secrets for secrets in keys.values()), keys


@pytest.fixture
def fresh_mocks() -> None:
    from pulumi.runtime import settings as runtime_settings

    from tests.program.mocks import AwsMocks

    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(AwsMocks(), preview=False)


@pulumi.runtime.test
def test_host_key_private_half_is_a_secret_output(fresh_mocks: None) -> pulumi.Output:
    """A decorated test: the asserts run inside `apply` and the Output is returned."""
    from components.hostkeys import HostKey

    key = HostKey("probe", "probe-host")
    control = pulumi.Output.from_input("plain")

    async def secrecy() -> tuple[bool, bool, bool]:
        return (await key.private_key.is_secret(), await key.public_key.is_secret(),
                await control.is_secret())

    def check(values: list) -> None:
        private, public = values
        assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert public.startswith("ssh-ed25519 AAAA")

    import asyncio
    flags = asyncio.ensure_future(secrecy())
    return pulumi.Output.all(key.private_key, key.public_key).apply(check).apply(
        lambda _: pulumi.Output.from_input(flags).apply(
            lambda f: None if f == (True, False, False) else (_ for _ in ()).throw(
                AssertionError(f"secrecy {f}"))))
