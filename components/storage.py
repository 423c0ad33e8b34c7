"""Storage classes, one per zone, rendered as manifests for the bootstrap to apply.

Seed 004: an EBS volume lives in one zone, so a class per zone pins its volumes there with
`allowedTopologies`; the default class binds late (`WaitForFirstConsumer`) so that the
volume is created in the zone the scheduler picked for the pod.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from components.base import Component
from components.settings import Settings

PROVISIONER = "ebs.csi.aws.com"
ZONE_KEY = "topology.kubernetes.io/zone"
DEFAULT_CLASS = "ebs-gp3"
_PARAMETERS = {"type": "gp3", "encrypted": "true", "csi.storage.k8s.io/fstype": "ext4"}


def class_name(zone: str) -> str:
    return f"{DEFAULT_CLASS}-{zone}"


def manifests(settings: Settings) -> list[dict[str, Any]]:
    """The default class first, then one class per zone (plain Kubernetes objects)."""
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

    default = storage_class(DEFAULT_CLASS, {}, {
        "storageclass.kubernetes.io/is-default-class": "true"})
    zonal = [storage_class(class_name(z), {"allowedTopologies": [{"matchLabelExpressions": [
        {"key": ZONE_KEY, "values": [z]}]}]}, {}) for z in settings.zone_names]
    return [default, *zonal]


@dataclass(frozen=True)
class StorageClassesArgs:
    settings: Settings


class StorageClasses(Component):
    """No cloud resources: the manifests are an output the bootstrap applies."""

    kind = "StorageClasses"

    def __init__(self, name: str, args: StorageClassesArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, args.settings, opts)
        self.manifests = pulumi.Output.from_input(manifests(args.settings))
        self.register_outputs({"manifests": self.manifests})
