"""Control-plane hosts: one or two per zone, each in its zone's private subnet.

Each host gets an encrypted EBS volume of its own for etcd (it outlives an instance
replacement), the control-plane instance profile, and user data carrying the host key the
program generated (secret), so the bootstrap verifies the host from its first connection.

A zone's hosts take its image and instance type (`multizone:controlPlaneZones`, else the
stack's), and every instance depends on the rollout guard (`components.rollout_guard`),
which refuses an update that would replace or restart hosts in more than one zone. A
replaced instance's etcd volume is detached (the old instance stopped first) before it is
attached to the new one: AWS refuses to attach a volume still in use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.base import Component
from components.cloudinit import host_user_data
from components.hostkeys import HostKey
from components.rollout_guard import ControlPlaneRollout, host_values
from components.settings import Settings

ETCD_DEVICE = "/dev/sdf"
_ASSUME_EC2 = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ec2.amazonaws.com"},
}]})
# What the AWS cloud provider needs to read on a control-plane host; nothing is written.
# ec2:DescribeInstances is also what the CSR approver (bootstrap.node.csr_approver,
# `--identity ec2:...`) checks a joining node against: a running instance tagged
# mzk:cluster, mzk:role=node and mzk:pool. EC2's Describe* calls support no resource-level
# permissions (nor tag conditions), so Resource "*" is the only scope AWS accepts.
_READ_ONLY = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Resource": "*",
    "Action": ["ec2:DescribeInstances", "ec2:DescribeRegions", "ec2:DescribeRouteTables",
               "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets", "ec2:DescribeVolumes",
               "ec2:DescribeAvailabilityZones", "elasticloadbalancing:Describe*"],
}]})


def host_name(settings: Settings, zone_suffix: str, index: int) -> str:
    """An RFC 1123 label: `<cluster>-cp-<zone letter><n>`, e.g. mz-prod-cp-a1."""
    return f"{settings.cluster_name}-cp-{zone_suffix}{index + 1}"


@dataclass
class ControlPlaneHost:
    name: str
    zone: str
    instance: aws.ec2.Instance
    host_key: HostKey
    etcd_volume: aws.ebs.Volume
    user_data: pulumi.Output[str] = field(repr=False)


@dataclass(frozen=True)
class ControlPlaneArgs:
    settings: Settings
    private_subnet_ids: Mapping[str, pulumi.Input[str]]
    security_group_id: pulumi.Input[str]


class ControlPlane(Component):
    kind = "ControlPlane"

    def __init__(self, name: str, args: ControlPlaneArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args.settings, opts)
        s = args.settings
        role = aws.iam.Role(self.child_name("role"), assume_role_policy=_ASSUME_EC2,
                            tags=self.tags(None, "role"), opts=self.opts())
        aws.iam.RolePolicy(self.child_name("read"), role=role.id, policy=_READ_ONLY,
                           opts=self.opts())
        profile = aws.iam.InstanceProfile(self.child_name("profile"), role=role.name,
                                          tags=self.tags(None, "profile"), opts=self.opts())
        self.rollout = ControlPlaneRollout(
            self.child_name("rollout"),
            {host_name(s, zone.suffix, i): host_values(s, zone.name)
             for zone in s.zones for i in range(s.control_plane_per_zone)},
            opts=self.opts())
        self.hosts: list[ControlPlaneHost] = []
        for zone in s.zones:
            for i in range(s.control_plane_per_zone):
                self.hosts.append(self._host(s, zone.name, zone.suffix, i,
                                             args.private_subnet_ids[zone.name],
                                             args.security_group_id, profile))
        self.register_outputs({
            "hosts": [{"name": h.name, "zone": h.zone, "address": h.instance.private_ip,
                       "hostKey": h.host_key.public_key} for h in self.hosts],
        })

    def _host(self, s: Settings, zone: str, suffix: str, i: int, subnet_id: pulumi.Input[str],
              sg_id: pulumi.Input[str], profile: aws.iam.InstanceProfile) -> ControlPlaneHost:
        hostname = host_name(s, suffix, i)
        key = HostKey(self.child_name(zone, str(i + 1), "host-key"), hostname, opts=self.opts())
        files = {"/etc/multizone/etcd-device": f"{ETCD_DEVICE}\n"}

        def render(keys: list[str]) -> str:
            return host_user_data(hostname, zone, s.ssh.user, s.ssh.public_key, keys[0],
                                  keys[1], files)

        user_data: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(key.private_key, key.public_key).apply(render))
        instance = aws.ec2.Instance(
            self.child_name(zone, str(i + 1)), ami=s.control_plane_image(zone),
            instance_type=s.control_plane_type(zone), subnet_id=subnet_id,
            vpc_security_group_ids=[sg_id], iam_instance_profile=profile.name,
            user_data=user_data, user_data_replace_on_change=True,
            metadata_options={"http_tokens": "required", "http_endpoint": "enabled"},
            root_block_device={"encrypted": True, "volume_type": "gp3", "volume_size": 40,
                               "tags": self.tags(zone, zone, str(i + 1), "root")},
            disable_api_termination=s.protect,
            tags={**self.tags(zone, zone, str(i + 1)), "multizone/role": "control-plane"},
            # User data is read at first boot only. Without this, a new operator key in the
            # stack settings would replace every control-plane host at once (etcd's quorum
            # with them); the bootstrap installs the key on running hosts instead.
            # The rollout guard first: its check refuses a change in more than one zone.
            opts=pulumi.ResourceOptions.merge(self.opts(), pulumi.ResourceOptions(
                ignore_changes=["userData"], depends_on=[self.rollout])))
        volume = aws.ebs.Volume(
            self.child_name(zone, str(i + 1), "etcd"), availability_zone=zone,
            size=s.etcd_volume_gib, type="gp3", encrypted=True,
            tags=self.tags(zone, zone, str(i + 1), "etcd"), opts=self.opts())
        # A new instance replaces the attachment: the old one must go first (the volume
        # attaches to one instance at a time), and the old instance is stopped before its
        # volume is taken away, so its etcd member stops cleanly instead of losing its disk.
        aws.ec2.VolumeAttachment(
            self.child_name(zone, str(i + 1), "etcd"), device_name=ETCD_DEVICE,
            volume_id=volume.id, instance_id=instance.id, stop_instance_before_detaching=True,
            opts=self.opts(delete_before_replace=True))
        return ControlPlaneHost(hostname, zone, instance, key, volume, user_data)
