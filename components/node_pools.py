"""Node pools: a launch template and an auto scaling group per zone; each zone's group is one
node pool (`nodes-<zone>`).

A node joins by kubelet TLS bootstrapping (bootstrap.node.join): its user data is the join
script for its pool, holding the cluster CA and its zone's API endpoint, and no secret: the
node's credential is the instance identity document EC2 signs for it, read from IMDSv2 at
boot, which the control plane's approver verifies (AWS's certificate for the region, then
the instance looked up by ID). Nothing expires in the template, so nodes join whether or not
`pulumi up` ran lately. The CA comes from the bootstrap resource's outputs, so the launch
templates are made after it (control-plane hosts -> bootstrap -> launch templates -> groups;
the groups' nodes are not in the inventory, so there is no cycle). The metadata service is
IMDSv2 only with a hop limit of 1 (a pod, one hop further, cannot read the instance's
identity document or its role's credentials) and without instance tags in it.

Instances carry the tags the approver checks (`mzk:cluster`, `mzk:role`, `mzk:pool`); their
node name is their private DNS name, which the approver takes from the instance itself, never
from a tag. Nodes are labelled with their zone (`topology.kubernetes.io/zone`, which the
kubelet sets on itself). The resource count does not depend on the node count: sizes are
numbers on the group. Instance refresh replaces nodes in batches with checkpoints, a pause
for cloud rate limits (seed 004).

The nodes' role also carries the EBS CSI driver's permissions (`ebs_csi_policy`): its
controller runs on nodes, on the host network (the metadata service's hop limit of 1 keeps
the role's credentials from pods on the pod network). Scoped by tags wherever EC2 allows it:
volumes are created only with this cluster's tags, and attached, detached, modified or
deleted only when they carry them, and attached only to this cluster's nodes
(docs/workloads-aws.md).
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from bootstrap import inventory as inventory_module
from bootstrap.node import join
from components.base import Component
from components.settings import Settings

ZONE_LABEL = "topology.kubernetes.io/zone"
POOL_PREFIX = "nodes"
# EC2 takes at most 16 KB of user data (before base64).
MAX_USER_DATA = 16 * 1024
REFRESH = aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
    min_healthy_percentage=90, max_healthy_percentage=110, instance_warmup="300",
    checkpoint_percentages=[10, 25, 50, 100], checkpoint_delay="600")
_ASSUME_EC2 = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ec2.amazonaws.com"},
}]})
# The tag the EBS CSI driver adds, beside kubernetes.io/cluster/<name>=owned, to every volume
# it creates when told the cluster's name (--k8s-tag-cluster-id). Nothing else in the stack
# carries it: the cluster tag alone is also on the etcd volumes and every root volume.
EBS_CSI_CLUSTER_TAG = "ebs.csi.aws.com/cluster-name"
# EC2's Describe* calls take no resource-level permissions or tag conditions: "*" is the
# only scope AWS accepts for them, and they change nothing.
EBS_CSI_DESCRIBE = ("ec2:DescribeAvailabilityZones", "ec2:DescribeInstances",
                    "ec2:DescribeInstanceTypes", "ec2:DescribeTags", "ec2:DescribeVolumes",
                    "ec2:DescribeVolumesModifications")


def pool_name(zone: str) -> str:
    """The node pool of a zone: a DNS label, e.g. nodes-eu-west-1a (its instances' group is
    `system:bootstrappers:mzk:<pool>`)."""
    return f"{POOL_PREFIX}-{zone}"


def node_tags(cluster: str, pool: str) -> dict[str, str]:
    """What the CSR approver reads (bootstrap.node.csr_approver.Ec2Identity) and the Name."""
    return {"Name": f"{cluster}/{pool}", "mzk:cluster": cluster, "mzk:role": "node",
            "mzk:pool": pool}


def ebs_csi_policy(settings: Settings) -> dict[str, Any]:
    """The EBS CSI controller's permissions, least privilege (docs/workloads-aws.md):

    - CreateVolume only when the request tags the volume as this cluster's (both tags);
    - CreateTags only as part of that CreateVolume (`ec2:CreateAction`), never on an
      existing resource, so no tag can be added to make a volume "ours";
    - Attach/Detach/Modify/Delete only on volumes carrying both tags, and Attach/Detach only
      to instances tagged as this cluster's nodes (not its control plane or bastion);
    - Describe* on "*", as EC2 requires. No snapshots: the snapshot sidecar is not run.
    """
    cluster = settings.cluster_name
    arn = f"arn:aws:ec2:{settings.region}:*"
    volume_tags = {settings.cluster_tag: "owned", EBS_CSI_CLUSTER_TAG: cluster}
    instance_tags = {settings.cluster_tag: "owned", "mzk:cluster": cluster, "mzk:role": "node"}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "DescribeIsUnscopedInEC2", "Effect": "Allow",
         "Action": list(EBS_CSI_DESCRIBE), "Resource": "*"},
        {"Sid": "CreateOnlyThisClustersVolumes", "Effect": "Allow",
         "Action": "ec2:CreateVolume", "Resource": f"{arn}:volume/*",
         "Condition": {"StringEquals": {f"aws:RequestTag/{k}": v
                                        for k, v in volume_tags.items()}}},
        {"Sid": "TagOnlyWhileCreating", "Effect": "Allow",
         "Action": "ec2:CreateTags", "Resource": f"{arn}:volume/*",
         "Condition": {"StringEquals": {"ec2:CreateAction": "CreateVolume"}}},
        {"Sid": "ChangeOnlyThisClustersVolumes", "Effect": "Allow",
         "Action": ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:ModifyVolume",
                    "ec2:DeleteVolume"],
         "Resource": f"{arn}:volume/*",
         "Condition": {"StringEquals": {f"ec2:ResourceTag/{k}": v
                                        for k, v in volume_tags.items()}}},
        {"Sid": "AttachOnlyToThisClustersNodes", "Effect": "Allow",
         "Action": ["ec2:AttachVolume", "ec2:DetachVolume"],
         "Resource": f"{arn}:instance/*",
         "Condition": {"StringEquals": {f"ec2:ResourceTag/{k}": v
                                        for k, v in instance_tags.items()}}},
    ]}


def join_script(raw_inventory: Mapping[str, Any], pool: str, ca_pem: str | None) -> str:
    """The user data of `pool`'s nodes: the join script for its zone and endpoint.

    Without a CA (the bootstrap resource has not answered: only under mocks, its provider
    fails otherwise) a script that says so and stops: such a node must never boot with
    something else in the place of the join."""
    if not ca_pem:
        message = (f"mzk-join: node pool {pool} has no cluster CA from the bootstrap "
                   "yet; this node cannot join. Run `pulumi up`.")
        return f"#!/bin/sh\necho {shlex.quote(message)} >&2\nexit 1\n"
    inventory = inventory_module.parse(dict(raw_inventory), source="the program's inventory")
    (found,) = [p for p in inventory.node_pools if p.name == pool]
    cluster = inventory.cluster
    script = join.user_data(join.JoinSpec(
        pool=pool, zone=found.zone, endpoint_url=inventory.zone(found.zone).endpoint.url,
        ca_pem=ca_pem, kubernetes_version=cluster.kubernetes_version,
        dns_address=cluster.dns_address, dns_domain=cluster.dns_domain,
        pod_network=cluster.cni == "bridge", cluster_cidr=cluster.pod_cidr,
        service_cidr=cluster.service_cidr))
    size = len(compressed(script))
    if size > MAX_USER_DATA:
        raise ValueError(f"node pool {pool}: the join script is {size} bytes gzip-compressed; "
                         f"EC2 takes at most {MAX_USER_DATA} bytes of user data")
    return script


def compressed(script: str) -> bytes:
    """The script gzip-compressed (cloud-init recognises and unpacks gzip user data), with
    no timestamp, so the same script gives the same launch template."""
    return gzip.compress(script.encode(), mtime=0)


def encoded_user_data(raw_inventory: Mapping[str, Any], pool: str, ca_pem: str | None) -> str:
    """What a launch template takes: the join script, gzip-compressed, base64."""
    return base64.b64encode(compressed(join_script(raw_inventory, pool, ca_pem))).decode()


@dataclass(frozen=True)
class NodePoolsArgs:
    settings: Settings
    private_subnet_ids: Mapping[str, pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    # The inventory the bootstrap applied (zones, endpoints, pools) and its outputs.
    inventory: pulumi.Input[dict[str, Any]]
    ca_certificate: pulumi.Input[str]


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
        aws.iam.RolePolicy(self.child_name("ebs-csi"), role=role.id,
                           policy=json.dumps(ebs_csi_policy(s)), opts=self.opts())
        self.groups: dict[str, aws.autoscaling.Group] = {}
        self.pools: dict[str, str] = {}  # zone -> pool name
        for zone in s.zones:
            z = zone.name
            pool_id = self.pools[z] = pool_name(z)

            def render(values: list[Any], pool_id: str = pool_id) -> str:
                return encoded_user_data(values[0], pool_id, values[1])

            # No secret in it (the CA certificate and the endpoint are public): reviews show
            # it, and a change to it is visible in a preview.
            user_data: pulumi.Output[str] = pulumi.Output.all(
                args.inventory, args.ca_certificate).apply(render)
            tags = {**self.tags(z, z), "multizone/role": "node",
                    **{k: v for k, v in node_tags(s.cluster_name, pool_id).items()
                       if k != "Name"}}
            launched = {**tags, **node_tags(s.cluster_name, pool_id)}
            template = aws.ec2.LaunchTemplate(
                self.child_name(z), image_id=s.image_id, instance_type=pool.instance_type,
                vpc_security_group_ids=[args.security_group_id],
                iam_instance_profile={"arn": profile.arn}, user_data=user_data,
                # IMDSv2 only; hop limit 1: a pod's packets (one hop more) never reach it,
                # so pods cannot read the identity document; no instance tags in it.
                metadata_options={"http_tokens": "required", "http_endpoint": "enabled",
                                  "http_put_response_hop_limit": 1,
                                  "instance_metadata_tags": "disabled"},
                block_device_mappings=[{"device_name": "/dev/xvda", "ebs": {
                    "encrypted": "true", "volume_type": "gp3", "volume_size": 50}}],
                tag_specifications=[{"resource_type": kind, "tags": launched}
                                    for kind in ("instance", "volume")],
                update_default_version=True, tags=tags, opts=self.opts())
            group_tags = {**launched,
                          f"k8s.io/cluster-autoscaler/node-template/label/{ZONE_LABEL}": z,
                          f"k8s.io/cluster-autoscaler/{s.cluster_name}": "owned",
                          "k8s.io/cluster-autoscaler/enabled": "true"}
            self.groups[z] = aws.autoscaling.Group(
                self.child_name(z), vpc_zone_identifiers=[args.private_subnet_ids[z]],
                min_size=pool.min_size, max_size=pool.max_size,
                desired_capacity=pool.desired,
                # $Latest: a new template version (a new CA, say) is what new nodes boot
                # from; it starts no instance refresh (running nodes have joined already).
                launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                    id=template.id, version="$Latest"),
                health_check_type="EC2", protect_from_scale_in=False,
                instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                    strategy="Rolling", preferences=REFRESH),
                tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True)
                      for k, v in group_tags.items()],
                opts=self.opts(ignore_changes=["desiredCapacity"]))
        self.register_outputs({"groups": {z: g.name for z, g in self.groups.items()},
                               "pools": self.pools})
