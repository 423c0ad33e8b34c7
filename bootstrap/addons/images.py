"""The container images add-ons run on real hosts, each pinned by the digest of its
multi-architecture index, so that every node runs the same bytes whatever a tag later points
at (the lab builds its own images: bootstrap.addons.lab_images).

Every digest is copied, never computed or guessed, from the image promoter's manifests that
publish registry.k8s.io (repository kubernetes/k8s.io, `registry.k8s.io/images/<staging
project>/images.yaml`, digest -> tags), at the commits named beside each group below. To add
a Kubernetes release to `bootstrap/k8s_releases.py`, add its kube-proxy here from the same
file (the `kube-proxy` list of `k8s-staging-kubernetes`), or `image_for` refuses it.

The EBS CSI driver's images are one coherent release: the driver v1.59.0 (Helm chart 2.59.0)
and the sidecar versions its registry.k8s.io overlay names at that release
(kubernetes-sigs/aws-ebs-csi-driver `deploy/kubernetes/overlays/stable/gcr/kustomization.yaml`
at commit ca6c538d041c08fe6e512b6b96d32c6857ea2f27, tag helm-chart-aws-ebs-csi-driver-2.59.0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REGISTRY = "registry.k8s.io"
KUBE_PROXY = "kube-proxy"
COREDNS = "coredns"
EBS_CSI_DRIVER = "aws-ebs-csi-driver"
CSI_PROVISIONER = "csi-provisioner"
CSI_ATTACHER = "csi-attacher"
CSI_RESIZER = "csi-resizer"
LIVENESS_PROBE = "livenessprobe"
NODE_DRIVER_REGISTRAR = "csi-node-driver-registrar"

# registry/path:tag@sha256:<64 hex>
REFERENCE = re.compile(r"^[a-z0-9.-]+(/[a-z0-9._-]+)+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$")

_PROMOTER = "kubernetes/k8s.io"
# The promoter manifests read for kube-proxy and the EBS CSI images (kube-proxy v1.35.4 and
# v1.36.0 were seen with the same digests in a second, independent pin).
_PROMOTER_COMMIT = "e10ab5f95c9786e66745737e865fd6f593358eae"
# CoreDNS's list at this commit already names v1.13.2; v1.13.1 is the one k8s-bin carries.
_COREDNS_COMMIT = "9a1bd547b6a93ef57e6c6f7940b2299e9ee76ee0"


def _source(project: str, commit: str) -> str:
    return f"{_PROMOTER} registry.k8s.io/images/{project}/images.yaml @ {commit}"


@dataclass(frozen=True)
class PinnedImage:
    repository: str  # "registry.k8s.io/kube-proxy"
    tag: str  # "v1.36.0"
    digest: str  # "sha256:<64 hex>": the image index (every architecture)
    source: str  # where the digest was read

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}@{self.digest}"


def _kube_proxy(version: str, digest: str) -> PinnedImage:
    return PinnedImage(f"{REGISTRY}/kube-proxy", f"v{version}", digest,
                       _source("k8s-staging-kubernetes", _PROMOTER_COMMIT))


def _sig_storage(name: str, tag: str, digest: str) -> PinnedImage:
    return PinnedImage(f"{REGISTRY}/sig-storage/{name}", tag, digest,
                       _source("k8s-staging-sig-storage", _PROMOTER_COMMIT))


# Kubernetes version (as bootstrap/k8s_releases.py writes it) -> kube-proxy of that release.
KUBE_PROXY_IMAGES: dict[str, PinnedImage] = {
    "1.36.0": _kube_proxy(
        "1.36.0", "sha256:0585504d29fee419791fdbc36c88a9d39773376a565d6f0c688673243df139fc"),
    "1.35.4": _kube_proxy(
        "1.35.4", "sha256:c5daa23c72474e5e4062c320177d3b485fd42e7010f052bc80d657c4c00a0672"),
    "1.34.7": _kube_proxy(
        "1.34.7", "sha256:062519bc0a14769e2f98c6bdff7816a17e6252de3f3c9cb102e6be33fe38d9e2"),
}

# Images whose version does not follow the cluster's.
IMAGES: dict[str, PinnedImage] = {
    COREDNS: PinnedImage(
        f"{REGISTRY}/coredns/coredns", "v1.13.1",
        "sha256:9b9128672209474da07c91439bf15ed704ae05ad918dd6454e5b6ae14e35fee6",
        _source("k8s-staging-coredns", _COREDNS_COMMIT)),
    EBS_CSI_DRIVER: PinnedImage(
        f"{REGISTRY}/provider-aws/aws-ebs-csi-driver", "v1.59.0",
        "sha256:0a1af0f81487cd86d3d6317ea3decb5c6d82f911a93aa9af47cba9db14e0b28b",
        _source("k8s-staging-provider-aws", _PROMOTER_COMMIT)),
    CSI_PROVISIONER: _sig_storage(
        CSI_PROVISIONER, "v6.2.0",
        "sha256:6be9f63ca4caa6c46aae55aa372500949d8a21473d72f819da1f746076b32d4e"),
    CSI_ATTACHER: _sig_storage(
        CSI_ATTACHER, "v4.11.0",
        "sha256:b74b05b39501565022883fc128002b4cb857a7bb6c858606bcb3fdedba0b0b80"),
    CSI_RESIZER: _sig_storage(
        CSI_RESIZER, "v2.1.0",
        "sha256:589e525cddef6d768e68da1f0bc9ffd0a24bf3add3dd010648eb7189976fde79"),
    LIVENESS_PROBE: _sig_storage(
        LIVENESS_PROBE, "v2.18.0",
        "sha256:c4cc074199c045dd73ab85f28897e2a32f4d6f38ffdba4f3b13b8007ccbd3570"),
    NODE_DRIVER_REGISTRAR: _sig_storage(
        NODE_DRIVER_REGISTRAR, "v2.16.0",
        "sha256:ab482308a4921e28a6df09a16ab99a457e9af9641ff44fb1be1a690d07ce8b70"),
}


def pinned(name: str, kubernetes_version: str) -> PinnedImage:
    """The pinned image `name` for a cluster of `kubernetes_version` ("1.36.0"); a
    ValueError in one line says what to add where."""
    if name == KUBE_PROXY:
        found = KUBE_PROXY_IMAGES.get(kubernetes_version)
        if found is None:
            raise ValueError(
                f"no pinned digest for kube-proxy v{kubernetes_version}: add it to "
                f"bootstrap/addons/images.py from {_PROMOTER} registry.k8s.io/images/"
                "k8s-staging-kubernetes/images.yaml (pinned: "
                f"{', '.join(sorted(KUBE_PROXY_IMAGES))})")
        return found
    if name not in IMAGES:
        raise ValueError(f"no pinned image named {name!r}: add it to bootstrap/addons/images.py "
                         f"(pinned: {', '.join(sorted((KUBE_PROXY, *IMAGES)))})")
    return IMAGES[name]


def image_for(name: str, kubernetes_version: str) -> str:
    """The reference a real host pulls: `registry/path:tag@sha256:<digest>`."""
    return pinned(name, kubernetes_version).reference
