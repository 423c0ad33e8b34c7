"""The Pulumi program: read settings, wire the components, export.

Bad settings stop the program before any resource is declared: every mistake is one line
naming the key and the fix, raised as `pulumi.RunError` so that Pulumi prints the lines
without a traceback and the update fails (non-zero exit).

Once the hosts exist, `ClusterBootstrap` runs `bootstrap apply` on the inventory during
`pulumi up` and keeps the PKI in the stack's state as secrets (docs/pulumi.md); the node
pools' launch templates come after it, their user data holding its CA.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from components.bastion import Bastion, BastionArgs
from components.cluster_bootstrap import ClusterBootstrap
from components.control_plane import ControlPlane, ControlPlaneArgs
from components.inventory import inventory
from components.load_balancers import LoadBalancers, LoadBalancersArgs
from components.network import Network, NetworkArgs
from components.node_pools import NodePools, NodePoolsArgs
from components.security import (
    BASTION,
    CONTROL_PLANE,
    LB_REGIONAL,
    LB_ZONAL,
    NODES,
    Security,
    SecurityArgs,
)
from components.settings import NS, Settings, SettingsError, from_config, read_pulumi_config
from components.storage import StorageClasses, StorageClassesArgs

# A hand-run PKI for a stack's first bootstrap (`bin/mzk pki export DIR FILE`, then
# `pulumi config set --secret multizone:pkiBundle < FILE`); read only while the stack has none.
PKI_BUNDLE = "pkiBundle"


def settings() -> Settings:
    """The stack's settings, checked against the zones AWS reports for the region."""
    config = read_pulumi_config()
    config.pop(f"{NS}:{PKI_BUNDLE}", None)  # a secret for the bootstrap resource, not a setting
    zones = None
    if config.get("aws:region"):
        zones = aws.get_availability_zones(state="available").names
    try:
        return from_config(config, pulumi.get_stack(), zones)
    except SettingsError as err:
        raise pulumi.RunError(str(err)) from err


def main() -> dict[str, Any]:
    """Declare the stack's resources; return the outputs to export."""
    s = settings()
    network = Network("network", NetworkArgs(s))
    private = {z: sn.id for z, sn in network.private_subnets.items()}
    public = {z: sn.id for z, sn in network.public_subnets.items()}
    security = Security("security", SecurityArgs(s, network.vpc.id))
    sg = {name: group.id for name, group in security.groups.items()}
    first = s.zones[0].name
    bastion = Bastion("bastion", BastionArgs(s, public[first], first, sg[BASTION]))
    control_plane = ControlPlane("control-plane", ControlPlaneArgs(s, private, sg[CONTROL_PLANE]))
    lbs = LoadBalancers("lb", LoadBalancersArgs(
        s, network.vpc.id, private, public, sg[LB_ZONAL], sg[LB_REGIONAL], control_plane.hosts))
    zone_endpoints = lbs.zone_endpoints
    storage = StorageClasses("storage", StorageClassesArgs(s))
    cluster_inventory = inventory(s, control_plane.hosts, bastion.hostname, bastion.address,
                                  bastion.host_key.public_key, lbs.regional.dns_name,
                                  zone_endpoints)
    bootstrap = ClusterBootstrap(
        "bootstrap", cluster_inventory,
        pulumi.Config(NS).get_secret(PKI_BUNDLE),
        opts=pulumi.ResourceOptions(depends_on=[control_plane, bastion, lbs],
                                    protect=s.protect))
    # After the bootstrap: each pool's user data holds the CA (nodes join by instance identity).
    NodePools("nodes", NodePoolsArgs(s, private, sg[NODES], cluster_inventory,
                                     bootstrap.ca_certificate))
    return {
        "regionalEndpoint": lbs.regional.dns_name,
        "zoneEndpoints": zone_endpoints,
        "bastionAddress": bastion.address,
        "storageClasses": storage.manifests,
        "inventory": cluster_inventory,
        "caCertificate": bootstrap.ca_certificate,
        "adminKubeconfig": bootstrap.admin_kubeconfig,  # a secret: client key inside
    }


if __name__ == "__main__":
    for key, value in main().items():
        pulumi.export(key, value)
