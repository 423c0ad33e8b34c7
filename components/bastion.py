"""The bastion: the only host with a public address and the only way in over SSH."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.base import Component
from components.cloudinit import host_user_data
from components.hostkeys import HostKey
from components.settings import Settings


@dataclass(frozen=True)
class BastionArgs:
    settings: Settings
    subnet_id: pulumi.Input[str]
    zone: str
    security_group_id: pulumi.Input[str]


class Bastion(Component):
    kind = "Bastion"

    def __init__(self, name: str, args: BastionArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args.settings, opts)
        s = args.settings
        self.hostname = f"{s.cluster_name}-bastion"
        self.host_key = HostKey(self.child_name("host-key"), self.hostname, opts=self.opts())

        def render(keys: list[str]) -> str:
            return host_user_data(self.hostname, args.zone, s.ssh.user, s.ssh.public_key,
                                  keys[0], keys[1])

        self.user_data: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.all(
            self.host_key.private_key, self.host_key.public_key).apply(render))
        self.instance = aws.ec2.Instance(
            self.child_name(args.zone), ami=s.image_id, instance_type=s.bastion_instance_type,
            subnet_id=args.subnet_id, vpc_security_group_ids=[args.security_group_id],
            associate_public_ip_address=True, user_data=self.user_data,
            user_data_replace_on_change=True,
            metadata_options={"http_tokens": "required", "http_endpoint": "enabled"},
            root_block_device={"encrypted": True, "volume_type": "gp3",
                               "tags": self.tags(args.zone, args.zone, "root")},
            disable_api_termination=s.protect, tags=self.tags(args.zone, args.zone),
            # First boot only: a new operator key is installed over SSH by the bootstrap.
            opts=pulumi.ResourceOptions.merge(self.opts(),
                                              pulumi.ResourceOptions(ignore_changes=["userData"])))
        self.address = self.instance.public_ip
        self.register_outputs({"address": self.address, "hostKey": self.host_key.public_key})
