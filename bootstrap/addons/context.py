"""What an add-on's manifests are rendered from: the inventory's facts that matter to
add-ons, gathered once, so that a renderer is a pure function of plain data."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AddonContext:
    cluster_name: str
    kubernetes_version: str  # "1.36.2"
    zones: tuple[str, ...]  # the inventory's zones, in order
    zone_endpoints: dict[str, str]  # zone -> https URL of its API endpoint (kubelets' too)
    regional_endpoint: str  # https URL of the regional endpoint
    service_cidr: str  # "10.96.0.0/12"
    pod_cidr: str  # the cluster's pod network, "10.244.0.0/16"
    dns_address: str  # the kube-dns Service's ClusterIP
    dns_domain: str  # "cluster.local"
    node_count: int  # Nodes registered now (inventory nodes when none answer yet)
    lab: bool  # lab: images built locally (imagePullPolicy Never), no upstream resolver
    # image name -> reference: lab "mzk.local/<name>:lab", real hosts pinned by digest
    images: dict[str, str] = field(default_factory=dict)
    pod_network: bool = True  # cluster.cni bridge: ours (bootstrap.node.pod_network)

    def image(self, name: str) -> str:
        return self.images[name]
