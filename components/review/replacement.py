"""Which input changes make AWS (through pulumi-aws) replace a resource: a table of facts.

pulumi-aws is generated from the Terraform AWS provider, so a property is replace-on-change
where the provider's schema says `ForceNew` (or `RequiresReplace`, or a `ForceNewIf` in its
CustomizeDiff). Each row names the property as the Pulumi program spells it, the condition
if there is one, and where the fact comes from. `checked` says whether the schema text was
read for this table (True) or the row rests on the provider documentation as remembered
(False): review those first when a diff depends on them.

Every resource type the program creates has an entry; an entry with no rows says that none
of its inputs forces a replacement. A type missing from the table is reported as "replacement
rules unknown" by the diff, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

TF = "hashicorp/terraform-provider-aws"
Condition = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]  # (old, new) inputs


@dataclass(frozen=True)
class Rule:
    prop: str  # top-level input (camelCase); "rootBlockDevice.encrypted" for a nested one
    source: str
    checked: bool = True
    when: str = ""  # the condition, in words
    applies: Condition | None = None


def _always(*props: str, source: str, checked: bool = True) -> list[Rule]:
    return [Rule(p, source, checked) for p in props]


def _user_data_replaces(_old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return bool(new.get("userDataReplaceOnChange"))


_SOURCES = ("cidrIpv4", "cidrIpv6", "prefixListId", "referencedSecurityGroupId")


def _source_kind_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return {k for k in _SOURCES if old.get(k)} != {k for k in _SOURCES if new.get(k)}


def _nlb_groups_appear_or_vanish(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return new.get("loadBalancerType") == "network" and \
        bool(old.get("securityGroups")) != bool(new.get("securityGroups"))


_RULE_SOURCE = f"{TF} internal/service/ec2/vpc_security_group_ingress_rule.go"
_SG_RULE = [
    Rule("securityGroupId", f"{_RULE_SOURCE}: RequiresReplace"),
    *[Rule(p, f"{_RULE_SOURCE}: ModifyPlan (a rule's source type cannot change)",
           when="the kind of source changes (CIDR / prefix list / group)",
           applies=_source_kind_changed) for p in _SOURCES],
]

FACTS: dict[str, list[Rule]] = {
    "aws:ec2/vpc:Vpc": _always(
        "cidrBlock", "ipv4IpamPoolId", "ipv4NetmaskLength",
        source=f"{TF} internal/service/ec2/vpc_.go: ForceNew"),
    "aws:ec2/subnet:Subnet": _always(
        "availabilityZone", "availabilityZoneId", "cidrBlock", "vpcId", "ipv6Native",
        "outpostArn", "ipv4IpamPoolId",
        source=f"{TF} internal/service/ec2/vpc_subnet.go: ForceNew"),
    "aws:ec2/internetGateway:InternetGateway": [],  # vpcId: detach + attach (update)
    "aws:ec2/routeTable:RouteTable": _always(
        "vpcId", source=f"{TF} internal/service/ec2/vpc_route_table.go: ForceNew"),
    "aws:ec2/route:Route": _always(
        "routeTableId", "destinationCidrBlock", "destinationIpv6CidrBlock",
        "destinationPrefixListId",
        source=f"{TF} internal/service/ec2/vpc_route.go: ForceNew (targets: ReplaceRoute)"),
    "aws:ec2/routeTableAssociation:RouteTableAssociation": _always(
        "subnetId", "gatewayId",
        source=f"{TF} internal/service/ec2/vpc_route_table_association.go: ForceNew "
               "(routeTableId: ReplaceRouteTableAssociation, an update)"),
    "aws:ec2/eip:Eip": _always(
        "address", "domain", "ipamPoolId", "networkBorderGroup", "publicIpv4Pool",
        source=f"{TF} internal/service/ec2/ec2_eip.go: ForceNew"),
    "aws:ec2/natGateway:NatGateway": _always(
        "allocationId", "connectivityType", "privateIp", "secondaryPrivateIpAddressCount",
        "subnetId", source=f"{TF} internal/service/ec2/vpc_nat_gateway.go: ForceNew"),
    "aws:ec2/securityGroup:SecurityGroup": _always(
        "name", "namePrefix", "description", "vpcId",
        source=f"{TF} internal/service/ec2/vpc_security_group.go: ForceNew"),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": _SG_RULE,
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": [
        Rule(r.prop, r.source.replace("ingress", "egress") + " (same base as ingress)",
             False, r.when, r.applies) for r in _SG_RULE],
    "aws:ec2/instance:Instance": [
        *_always("ami", "associatePublicIpAddress", "availabilityZone",
                 source=f"{TF} aws_instance schema (resource_aws_instance.go): ForceNew"),
        *_always("subnetId", "privateIp", "keyName", "securityGroups", "tenancy",
                 "ebsOptimized", "hibernation", "hostId", "launchTemplate", "placementGroup",
                 "placementPartitionNumber", "privateDnsNameOptions", "ipv6Addresses",
                 "ipv6AddressCount", "cpuCoreCount", "cpuThreadsPerCore",
                 "ephemeralBlockDevices", "ebsBlockDevices", "rootBlockDevice.encrypted",
                 "rootBlockDevice.kmsKeyId",
                 source=f"{TF} internal/service/ec2/ec2_instance.go: ForceNew "
                        "(vpcSecurityGroupIds, instanceType, iamInstanceProfile: updates)"),
        *[Rule(p, f"{TF} internal/service/ec2/ec2_instance.go: CustomizeDiff ForceNewIf",
               when="userDataReplaceOnChange is true (else a stop/start)",
               applies=_user_data_replaces) for p in ("userData", "userDataBase64")],
    ],
    "aws:ebs/volume:Volume": _always(
        "availabilityZone", "encrypted", "kmsKeyId", "multiAttachEnabled", "outpostArn",
        "snapshotId", source=f"{TF} internal/service/ec2/ebs_volume.go: ForceNew "
                             "(size, type, iops, throughput: ModifyVolume)"),
    "aws:ec2/volumeAttachment:VolumeAttachment": _always(
        "deviceName", "instanceId", "volumeId",
        source=f"{TF} internal/service/ec2/ebs_volume_attachment.go: ForceNew"),
    "aws:ec2/launchTemplate:LaunchTemplate": _always(
        "name", "namePrefix",
        source=f"{TF} internal/service/ec2/ec2_launch_template.go: ForceNew; every other "
               "input makes a new template version (an update)", checked=False),
    "aws:autoscaling/group:Group": _always(
        "name", "namePrefix",
        source=f"{TF} internal/service/autoscaling/group.go: ForceNew", checked=False),
    "aws:lb/loadBalancer:LoadBalancer": [
        *_always("internal", "loadBalancerType", "name", "namePrefix",
                 "customerOwnedIpv4Pool",
                 source=f"{TF} internal/service/elbv2/load_balancer.go: ForceNew"),
        Rule("securityGroups", "AWS ELBv2 API SetSecurityGroups: not on a Network Load "
             "Balancer created without security groups", checked=True,
             when="a network load balancer gains its first or loses its last group",
             applies=_nlb_groups_appear_or_vanish),
    ],
    "aws:lb/targetGroup:TargetGroup": _always(
        "name", "namePrefix", "port", "protocol", "protocolVersion", "targetType", "vpcId",
        "ipAddressType",
        source=f"{TF} internal/service/elbv2/target_group.go: ForceNew"),
    "aws:lb/targetGroupAttachment:TargetGroupAttachment": _always(
        "targetGroupArn", "targetId", "port", "availabilityZone",
        source=f"{TF} internal/service/elbv2/target_group_attachment.go: ForceNew "
               "(no update at all)"),
    "aws:lb/listener:Listener": _always(
        "loadBalancerArn", source=f"{TF} internal/service/elbv2/listener.go: ForceNew",
        checked=False),
    "aws:route53/zone:Zone": _always(
        "name", "delegationSetId",
        source=f"{TF} internal/service/route53/zone.go: ForceNew (vpcs: associate / "
               "disassociate, an update)", checked=False),
    "aws:route53/record:Record": _always(
        "name", "zoneId",
        source=f"{TF} internal/service/route53/record.go: ForceNew (type, records, ttl: "
               "UPSERT)"),
    "aws:iam/role:Role": _always(
        "name", "namePrefix", "path",
        source=f"{TF} internal/service/iam/role.go: ForceNew", checked=False),
    "aws:iam/rolePolicy:RolePolicy": _always(
        "name", "namePrefix", "role",
        source=f"{TF} internal/service/iam/role_policy.go: ForceNew"),
    "aws:iam/instanceProfile:InstanceProfile": _always(
        "name", "namePrefix", "path",
        source=f"{TF} internal/service/iam/instance_profile.go: ForceNew (role: update)"),
    # Ours: components/cluster_bootstrap.py's provider updates in place, never replaces.
    "pulumi-python:dynamic/multizone:ClusterBootstrap": [],
    # Ours: components/rollout_guard.py's provider updates in place, never replaces.
    "pulumi-python:dynamic/multizone:ControlPlaneRollout": [],
    # Ours: components/hostkeys.py HostKeyProvider.diff replaces on a new host name.
    "pulumi-python:dynamic/multizone:HostKey": _always(
        "host", source="components/hostkeys.py: HostKeyProvider.diff"),
}


def known(typ: str) -> bool:
    """Whether the table covers `typ` (components are not cloud resources: always known)."""
    return typ in FACTS or not typ.startswith(("aws:", "pulumi-python:"))


def replacing(typ: str, prop: str, old: Mapping[str, Any],
              new: Mapping[str, Any]) -> Rule | None:
    """The rule by which a change of `prop` (a flattened path) replaces the resource."""
    for rule in FACTS.get(typ, []):
        if prop == rule.prop or prop.startswith((rule.prop + ".", rule.prop + "[")):
            if rule.applies is None or rule.applies(old, new):
                return rule
    return None
