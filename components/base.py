"""What every component shares: its type token, child options and tags.

Children are parented to their component, named `<component>-<zone>-...`, carry the
cluster, stack and zone tags, and inherit the stack's deletion protection explicitly (so
that `protect` is visible on every resource, not only on the component).
"""

from __future__ import annotations

import re

import pulumi

from components.settings import Settings

PACKAGE = "multizone"
REGIONAL = "regional"


def tags(settings: Settings, zone: str | None, name: str) -> dict[str, str]:
    """The tags of one AWS resource: cluster (as the AWS cloud provider expects), stack, zone."""
    out = {
        "Name": f"{settings.cluster_name}-{name}",
        settings.cluster_tag: "owned",
        "multizone/cluster": settings.cluster_name,
        "multizone/stack": settings.stack,
        "multizone/zone": zone or REGIONAL,
    }
    if settings.expires_at:
        out["expires-at"] = settings.expires_at
    return out


class Component(pulumi.ComponentResource):
    """A `ComponentResource` that names, tags and protects its children."""

    kind = "Component"

    def __init__(self, name: str, settings: Settings,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(pulumi.ResourceOptions(protect=settings.protect),
                                            opts)
        super().__init__(f"{PACKAGE}:components:{self.kind}", name, None, opts)
        self.name = name
        self.settings = settings

    def child_name(self, *parts: str) -> str:
        return "-".join((self.name, *(re.sub(r"[^A-Za-z0-9.-]+", "-", p) for p in parts)))

    def opts(self, **extra: object) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, protect=self.settings.protect,
                                      **extra)  # type: ignore[arg-type]

    def tags(self, zone: str | None, *parts: str) -> dict[str, str]:
        return tags(self.settings, zone, self.child_name(*parts))
