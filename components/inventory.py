"""The inventory: the plain data `bootstrap.inventory.parse()` reads.

It carries the control-plane hosts and the bastion, with the public host keys the program
generated, pinned. Node hosts come from auto scaling groups and are unknown at `pulumi up`
time: they join later, by TLS bootstrapping with their pool's token; the inventory names the
pools (one per zone, `node_pools`) so that the bootstrap issues each its token. Nothing secret
is in it (the operator's private key is a path).
The endpoints are the names clients are given (the regional balancer's DNS name, each
zone's `api-<zone letter>.<cluster>.internal`): the bootstrap puts every one of them in the
API server certificate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi

from components.control_plane import ControlPlaneHost
from components.node_pools import pool_name
from components.settings import Settings


def build(settings: Settings, hosts: Sequence[dict[str, Any]], bastion: dict[str, Any],
          regional: str, zonal: dict[str, str]) -> dict[str, Any]:
    """Assemble the inventory from resolved values (pure, so it is tested on its own)."""
    s, p = settings, settings.pki
    return {
        "cluster": {"name": s.cluster_name, "kubernetes_version": s.kubernetes_version,
                    "service_cidr": s.service_cidr, "pod_cidr": s.pod_cidr,
                    "dns_domain": s.dns_domain, "api_port": s.api_port, "egress": s.egress,
                    "max_nodes": s.max_nodes},
        "endpoints": {
            "regional": {"name": regional, "port": s.api_port},
            "zones": {z: {"name": zonal[z], "port": s.api_port} for z in s.zone_names},
            # NLB health checks: 10 s interval x 2 unhealthy checks, plus a margin.
            "drain_seconds": 30,
        },
        "zones": [{"name": z.name, "subnets": [z.private_subnet]} for z in s.zones],
        "hosts": [{"name": h["name"], "zone": h["zone"], "roles": ["control-plane", "etcd"],
                   "address": h["address"], "ssh_port": 22, "host_key": h["host_key"],
                   "etcd_volume": h["etcd_volume"]}
                  for h in hosts],
        "ssh": {"user": s.ssh.user, "private_key": s.ssh.private_key_path,
                # The bootstrap keeps every host's authorized_keys to this (plus the key it
                # logs in with): the key rotates without replacing any instance.
                "authorized_keys": [s.ssh.public_key],
                "bastion": {"name": bastion["name"], "address": bastion["address"],
                            "ssh_port": 22, "host_key": bastion["host_key"]}},
        # Each zone's auto scaling group.
        "node_pools": [{"name": pool_name(z), "zone": z} for z in s.zone_names],
        "pki": {"key_type": p.key_type, "rsa_bits": p.rsa_bits,
                "ca_validity_days": p.ca_validity_days, "validity_days": p.validity_days,
                "renew_before_days": p.renew_before_days,
                "ca_keys_on_hosts": p.ca_keys_on_hosts},
    }


def inventory(settings: Settings, hosts: Sequence[ControlPlaneHost], bastion_name: str,
              bastion_address: pulumi.Input[str], bastion_key: pulumi.Input[str],
              regional: pulumi.Input[str],
              zonal: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[dict[str, Any]]:
    """The inventory as one Output; only public values flow into it."""
    def resolved(h: ControlPlaneHost) -> pulumi.Output[dict[str, str]]:
        return pulumi.Output.all(h.instance.private_ip, h.host_key.public_key,
                                 h.etcd_volume.id).apply(
            lambda v: {"name": h.name, "zone": h.zone, "address": v[0], "host_key": v[1],
                       "etcd_volume": v[2]})

    resolved_hosts = pulumi.Output.all(*[resolved(h) for h in hosts])
    bastion = pulumi.Output.all(bastion_address, bastion_key).apply(
        lambda v: {"name": bastion_name, "address": v[0], "host_key": v[1]})
    return pulumi.Output.all(resolved_hosts, bastion, regional, pulumi.Output.all(**zonal)) \
        .apply(lambda v: build(settings, v[0], v[1], v[2], v[3]))
