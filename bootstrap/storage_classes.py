"""Storage classes, one per zone, plus a default: plain Kubernetes objects.

Seed 004: an EBS volume lives in one zone, so a class per zone pins its volumes there with
`allowedTopologies`; the default class binds late (`WaitForFirstConsumer`) so that the
volume is created in the zone the scheduler picked for the pod. The Pulumi program exports
them (components/storage.py) and the bootstrap applies them (bootstrap.steps.cluster_objects)
from the inventory's zones: one rendering for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROVISIONER = "ebs.csi.aws.com"
ZONE_KEY = "topology.kubernetes.io/zone"
DEFAULT_CLASS = "ebs-gp3"
DEFAULT_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
_PARAMETERS = {"type": "gp3", "encrypted": "true", "csi.storage.k8s.io/fstype": "ext4"}


def class_name(zone: str) -> str:
    return f"{DEFAULT_CLASS}-{zone}"


def manifests(zones: Sequence[str]) -> list[dict[str, Any]]:
    """The default class first, then one class per zone."""
    def storage_class(name: str, extra: dict[str, Any], annotations: dict[str, str]) -> dict:
        metadata: dict[str, Any] = {"name": name, "labels": {
            "app.kubernetes.io/managed-by": "multizone-k8s"}}
        if annotations:
            metadata["annotations"] = annotations
        return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": metadata, "provisioner": PROVISIONER,
                "parameters": dict(_PARAMETERS), "reclaimPolicy": "Delete",
                "allowVolumeExpansion": True, "volumeBindingMode": "WaitForFirstConsumer",
                **extra}

    default = storage_class(DEFAULT_CLASS, {}, {DEFAULT_ANNOTATION: "true"})
    zonal = [storage_class(class_name(z), {"allowedTopologies": [{"matchLabelExpressions": [
        {"key": ZONE_KEY, "values": [z]}]}]}, {}) for z in zones]
    return [default, *zonal]


# Fields a StorageClass cannot change once made: a difference there means delete and create.
IMMUTABLE = ("provisioner", "parameters", "reclaimPolicy", "volumeBindingMode",
             "allowedTopologies")


def differs(have: dict[str, Any] | None, want: dict[str, Any]) -> str | None:
    """None if `have` is `want` as far as we set it; else "create", "update" or
    "replace" (an immutable field differs)."""
    if have is None:
        return "create"
    if any(have.get(f) != want.get(f) for f in IMMUTABLE):
        return "replace"
    meta_have, meta_want = have.get("metadata", {}), want["metadata"]
    for part in ("labels", "annotations"):
        got = meta_have.get(part) or {}
        if any(got.get(k) != v for k, v in (meta_want.get(part) or {}).items()):
            return "update"
    if have.get("allowVolumeExpansion") != want.get("allowVolumeExpansion"):
        return "update"
    return None
