"""Node pools: a launch template and an auto scaling group per zone.

Nodes are labelled with their zone (`topology.kubernetes.io/zone`, which the kubelet may set
on itself) and told their zone's API endpoint. The resource count does not depend on the
node count: sizes are numbers on the group. Instance refresh replaces nodes in batches with
checkpoints, a pause for cloud rate limits (seed 004).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.base import Component
from components.cloudinit import host_user_data
from components.settings import Settings

ZONE_LABEL = "topology.kubernetes.io/zone"
REFRESH = aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
    min_healthy_percentage=90, max_healthy_percentage=110, instance_warmup="300",
    checkpoint_percentages=[10, 25, 50, 100], checkpoint_delay="600")
_ASSUME_EC2 = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ec2.amazonaws.com"},
}]})


def node_files(zone: str, endpoint: str, port: int) -> dict[str, str]:
    """What a node knows before it joins: its zone label and its zone's API endpoint."""
    return {"/etc/multizone/node.env": f"NODE_LABELS={ZONE_LABEL}={zone}\n"
                                       f"API_ENDPOINT=https://{endpoint}:{port}\n"}


@dataclass(frozen=True)
class NodePoolsArgs:
    settings: Settings
    private_subnet_ids: Mapping[str, pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    zone_endpoints: Mapping[str, pulumi.Input[str]]


class NodePools(Component):
    kind = "NodePools"

    def __init__(self, name: str, args: NodePoolsArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args.settings, opts)
        s = args.settings
        pool = s.node_pool
        role = aws.iam.Role(self.child_name("role"), assume_role_policy=_ASSUME_EC2,
                            tags=self.tags(None, "role"), opts=self.opts())
        profile = aws.iam.InstanceProfile(self.child_name("profile"), role=role.name,
                                          tags=self.tags(None, "profile"), opts=self.opts())
        self.groups: dict[str, aws.autoscaling.Group] = {}
        for zone in s.zones:
            z = zone.name

            def render(endpoint: str, z: str = z) -> str:
                return base64.b64encode(host_user_data(
                    f"{s.cluster_name}-node-{z}", z, s.ssh.user, s.ssh.public_key,
                    files=node_files(z, endpoint, s.api_port)).encode()).decode()

            user_data = pulumi.Output.from_input(args.zone_endpoints[z]).apply(render)
            tags = {**self.tags(z, z), "multizone/role": "node"}
            template = aws.ec2.LaunchTemplate(
                self.child_name(z), image_id=s.image_id, instance_type=pool.instance_type,
                vpc_security_group_ids=[args.security_group_id],
                iam_instance_profile={"arn": profile.arn}, user_data=user_data,
                metadata_options={"http_tokens": "required", "http_endpoint": "enabled"},
                block_device_mappings=[{"device_name": "/dev/xvda", "ebs": {
                    "encrypted": "true", "volume_type": "gp3", "volume_size": 50}}],
                tag_specifications=[{"resource_type": kind, "tags": tags}
                                    for kind in ("instance", "volume")],
                update_default_version=True, tags=tags, opts=self.opts())
            group_tags = {**tags, f"k8s.io/cluster-autoscaler/node-template/label/{ZONE_LABEL}": z,
                          f"k8s.io/cluster-autoscaler/{s.cluster_name}": "owned",
                          "k8s.io/cluster-autoscaler/enabled": "true"}
            self.groups[z] = aws.autoscaling.Group(
                self.child_name(z), vpc_zone_identifiers=[args.private_subnet_ids[z]],
                min_size=pool.min_size, max_size=pool.max_size,
                desired_capacity=pool.desired,
                launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                    id=template.id, version="$Latest"),
                health_check_type="EC2", protect_from_scale_in=False,
                instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                    strategy="Rolling", preferences=REFRESH),
                tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True)
                      for k, v in group_tags.items()],
                opts=self.opts(ignore_changes=["desiredCapacity"]))
        self.register_outputs({"groups": {z: g.name for z, g in self.groups.items()}})
