"""The lab's volumes: pre-made PersistentVolumes per zone behind the same storage classes
AWS gets (bootstrap.storage_classes), since no EBS exists in the lab.

Each volume belongs to one zone (node affinity on `topology.kubernetes.io/zone`) and one
class: the zone's own class and the default class, both late-binding. So the scheduler
places a pod whose claim names a zone's class in that zone, and a pod on the default class
where a volume is free, exactly the PVC -> zone -> pod placement EBS gives; the volume is a
directory on the node the pod lands on (the lab has no network storage). Kept when released
(`Retain`): nobody deletes a lab volume's data behind a test's back.
"""

from __future__ import annotations

from typing import Any

from bootstrap import storage_classes
from bootstrap.addons.context import AddonContext

ADDON = "lab-volumes"
PER_ZONE = 3  # volumes per zone and class
SIZE = "1Gi"
ROOT = "/var/lib/mzk/lab-volumes"


def _volume(name: str, zone: str, storage_class: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {
                "app.kubernetes.io/managed-by": "multizone-k8s", "mzk.io/addon": ADDON,
                storage_classes.ZONE_KEY: zone}},
            "spec": {"capacity": {"storage": SIZE}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain",
                     "storageClassName": storage_class, "volumeMode": "Filesystem",
                     "hostPath": {"path": f"{ROOT}/{name}", "type": "DirectoryOrCreate"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{
                         "matchExpressions": [{"key": storage_classes.ZONE_KEY,
                                               "operator": "In", "values": [zone]}]}]}}}}


def manifests(ctx: AddonContext) -> list[dict[str, Any]]:
    found = []
    for zone in ctx.zones:
        for i in range(1, PER_ZONE + 1):
            found.append(_volume(f"lab-{zone}-{i}", zone, storage_classes.class_name(zone)))
            found.append(_volume(f"lab-{zone}-default-{i}", zone,
                                 storage_classes.DEFAULT_CLASS))
    return found
