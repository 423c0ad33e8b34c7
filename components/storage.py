"""Storage classes, one per zone: exported for review; the bootstrap applies the same
objects, rendered by bootstrap.storage_classes from the zones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from bootstrap import storage_classes
from components.base import Component
from components.settings import Settings

PROVISIONER = storage_classes.PROVISIONER
class_name = storage_classes.class_name


def manifests(settings: Settings) -> list[dict[str, Any]]:
    """The default class first, then one class per zone (bootstrap.storage_classes)."""
    return storage_classes.manifests(settings.zone_names)


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
