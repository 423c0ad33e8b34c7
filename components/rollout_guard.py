"""The control plane changes one zone per `pulumi up`, or not at all.

A new AMI replaces a control-plane instance and a new instance type stops and starts it. If
one `up` did that in every zone, etcd (one member a host) would lose its quorum and the API
with it. This dynamic resource, `ControlPlaneRollout`, holds what replaces or restarts each
control-plane host (its zone, image, instance type and subnet); every control-plane
instance depends on it. Its `check` compares the last `up`'s values (`olds`) with these:
when hosts of more than one zone would change, it fails with one line saying which and how
to proceed, so `pulumi preview` fails and `pulumi up` (which previews first) stops before
any resource changes. A first creation (no old values) and host additions or removals are
allowed; the host a zone gains or loses is the bootstrap's business (etcd member add or
remove).

Check contacts nothing: the values come from the stack settings alone
(`Settings.control_plane_image`, `control_plane_type`, the zone's private subnet).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi.dynamic as dyn

from components.settings import Settings

TYPE = "pulumi-python:dynamic/multizone:ControlPlaneRollout"
# Each host's values whose change replaces (imageId, subnet, zone) or restarts
# (instanceType) its instance, by the names the stack settings use.
FIELDS = ("zone", "imageId", "instanceType", "privateSubnet")
HOW = ("move one zone per `pulumi up`: pin the zones that are not to change yet with "
       "multizone:controlPlaneZones.<zone>.imageId / .instanceType (their current values), "
       "run `pulumi up`, then lift one zone's pin per `pulumi up` (docs/pulumi.md, "
       "\"Changing the control plane\")")


def host_values(settings: Settings, zone: str) -> dict[str, str]:
    """What replaces or restarts a control-plane host of `zone`, from the settings."""
    subnet = next(z.private_subnet for z in settings.zones if z.name == zone)
    return {"zone": zone, "imageId": settings.control_plane_image(zone),
            "instanceType": settings.control_plane_type(zone), "privateSubnet": subnet}


def changes_by_zone(old: Any, new: Any) -> dict[str, list[str]]:
    """zone -> the changes of its hosts that exist before and after ("host imageId a -> b"),
    for zones where something would replace or restart a host."""
    found: dict[str, list[str]] = {}
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return found
    for host in sorted(set(old) & set(new)):
        was, now = old[host], new[host]
        if not isinstance(was, Mapping) or not isinstance(now, Mapping):
            continue
        diffs = [f"{k} {was.get(k)} -> {now.get(k)}" for k in FIELDS if was.get(k) != now.get(k)]
        if diffs:
            zone = str(now.get("zone"))
            found.setdefault(zone, []).append(f"{host} {', '.join(diffs)}")
    return found


def refusal(old: Any, new: Any) -> str | None:
    """The one line that refuses an update touching hosts in more than one zone, or None."""
    zones = changes_by_zone(old, new)
    if len(zones) <= 1:
        return None
    what = "; ".join(f"{zone}: {', '.join(hosts)}" for zone, hosts in sorted(zones.items()))
    return (f"this update would replace or restart control-plane hosts in {len(zones)} zones "
            f"at once ({what}), and etcd would lose its quorum; {HOW}")


class ControlPlaneRolloutProvider(dyn.ResourceProvider):
    """check refuses a change in more than one zone; the rest stores the values."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> dyn.CheckResult:
        reason = refusal(olds.get("hosts"), news.get("hosts"))
        failures = [dyn.CheckFailure("hosts", reason)] if reason else []
        return dyn.CheckResult(dict(news), failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        return dyn.DiffResult(changes=olds.get("hosts") != news.get("hosts"), replaces=[],
                              delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        return dyn.CreateResult("control-plane-rollout", dict(props))

    def update(self, _id: str, _olds: dict[str, Any],
               news: dict[str, Any]) -> dyn.UpdateResult:
        return dyn.UpdateResult(dict(news))


class ControlPlaneRollout(dyn.Resource, module="multizone", name="ControlPlaneRollout"):
    """host name -> what replaces or restarts it; see the module docstring."""

    hosts: pulumi.Output[dict[str, dict[str, str]]]

    def __init__(self, name: str, hosts: Mapping[str, Mapping[str, str]],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(ControlPlaneRolloutProvider(), name,
                         {"hosts": {h: dict(v) for h, v in hosts.items()}}, opts)
