"""The cluster DNS autoscaler: CoreDNS's replicas and resources follow the node count.

Nodes come and go without `apply` (auto-scaled pools), so the control plane keeps CoreDNS
sized by the rule the renderer uses (bootstrap.addons.dns_scale): count the Nodes, read the
`kube-system/coredns` Deployment, and when its replicas or its `coredns` container's
resources differ from the rule, send one strategic merge patch setting both. A converged
cluster costs two GETs and no write. The node list is read from the API server's cache
(`resourceVersion=0`): a count a few seconds old is good enough and spares etcd at 5,000
nodes.

Shipped to the control-plane hosts beside the CSR approver (which runs it from its loop)
together with its companion `dns_scale.py` (bootstrap/addons/dns_scale.py), and imported
there as a top-level module by their python3 (3.9+): standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

try:  # in the project
    from bootstrap.addons.dns_scale import DnsRule
except ImportError:  # on a host: shipped beside this module
    from dns_scale import DnsRule  # type: ignore[no-redef]

# The modules shipped beside this one (from bootstrap/addons/, as <name>.py).
COMPANIONS = ("dns_scale",)
NAMESPACE = "kube-system"
DEPLOYMENT = "coredns"
CONTAINER = "coredns"
FIELD_MANAGER = "multizone-k8s"
NODES_PATH = "/api/v1/nodes?resourceVersion=0"
DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{DEPLOYMENT}"
PATCH_TYPE = "application/strategic-merge-patch+json"
PERIOD = 30.0  # seconds between looks: DNS need not follow the nodes to the second


class Api(Protocol):
    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]: ...


def count_nodes(api: Api) -> int:
    """The registered Nodes, those being deleted left out."""
    status, listing = api.request("GET", NODES_PATH)
    if status != 200 or not isinstance(listing, dict):
        raise RuntimeError(f"GET nodes: HTTP {status}")
    return sum(1 for node in listing.get("items") or []
               if not (node.get("metadata") or {}).get("deletionTimestamp"))


def scale_once(api: Api, rule: DnsRule, zones: int) -> str | None:
    """One look: patch the Deployment if it differs from the rule; a one-line `key=value`
    description of the change, or None (converged, or no Deployment yet). API errors raise:
    the caller backs off."""
    nodes = count_nodes(api)
    status, deployment = api.request("GET", DEPLOYMENT_PATH)
    if status == 404:
        return None
    if status != 200 or not isinstance(deployment, dict):
        raise RuntimeError(f"GET deployment {NAMESPACE}/{DEPLOYMENT}: HTTP {status}")
    spec = deployment.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == CONTAINER), None)
    if container is None:
        raise RuntimeError(f"deployment {NAMESPACE}/{DEPLOYMENT} has no container "
                           f"{CONTAINER!r}: `apply` renders it again")
    changes: list[str] = []
    patch_spec: dict[str, Any] = {}
    have_replicas = spec.get("replicas", 1)
    want_replicas = rule.replicas(nodes, zones)
    if have_replicas != want_replicas:
        patch_spec["replicas"] = want_replicas
        changes.append(f"replicas={have_replicas}->{want_replicas}")
    resources, resource_changes = resources_patch(container.get("resources") or {},
                                                  rule.resources(nodes))
    if resource_changes:
        patch_spec["template"] = {"spec": {"containers": [
            {"name": CONTAINER, "resources": resources}]}}
        changes += resource_changes
    if not changes:
        return None
    status, _ = api.request("PATCH", f"{DEPLOYMENT_PATH}?fieldManager={FIELD_MANAGER}",
                            {"spec": patch_spec}, PATCH_TYPE)
    if status == 404:  # deleted meanwhile: `apply` renders it again, sized
        return None
    if status != 200:
        raise RuntimeError(f"PATCH deployment {NAMESPACE}/{DEPLOYMENT}: HTTP {status}")
    return " ".join([f"deployment={NAMESPACE}/{DEPLOYMENT}", f"nodes={nodes}",
                     f"zones={zones}", *changes])


def resources_patch(have: dict[str, Any], want: dict[str, dict[str, str]],
                    ) -> tuple[dict[str, Any], list[str]]:
    """The resources to send (the rule's, and null for every other request or limit, which
    a strategic merge would otherwise keep) and the changes as `limits.memory=A->B`;
    quantities compare by value (`0.1` is `100m`)."""
    patch: dict[str, Any] = {}
    changes: list[str] = []
    for section in ("requests", "limits"):
        current = have.get(section) or {}
        wanted = want.get(section) or {}
        patch[section] = dict(wanted)
        for key in sorted(set(current) | set(wanted)):
            old, new = current.get(key), wanted.get(key)
            if new is None:
                patch[section][key] = None
            if old is None or new is None or not same_quantity(str(old), new):
                changes.append(f"{section}.{key}={old or 'none'}->{new or 'none'}")
    return patch, changes


_QUANTITY = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
                       r"(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?")
_SCALE: dict[str, Fraction | int] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity(text: str) -> Fraction | None:
    """A Kubernetes quantity's value (`1Gi`, `100m`, `1e3`), or None if it is not one."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        return None
    number, suffix = Fraction(match.group(1)), match.group(2) or ""
    if len(suffix) > 1 and suffix[0] in "eE" and suffix[1] != "i":
        return number * Fraction(10) ** int(suffix[1:])
    return number * _SCALE[suffix]


def same_quantity(a: str, b: str) -> bool:
    qa, qb = quantity(a), quantity(b)
    return a == b if qa is None or qb is None else qa == qb


@dataclass
class DnsAutoscaler:
    """`scale_once` at most every `period` seconds, for a caller that loops faster (the CSR
    approver passes every second); a failed look waits a period too."""

    api: Api
    rule: DnsRule
    zones: int
    period: float = PERIOD
    next_look: float = 0.0

    def tick(self, now: float) -> str | None:
        if now < self.next_look:
            return None
        self.next_look = now + self.period
        return scale_once(self.api, self.rule, self.zones)


def rbac_manifests(user: str) -> list[dict[str, Any]]:
    """The least the autoscaler needs: list Nodes; get and patch the one Deployment."""
    group, name = "rbac.authorization.k8s.io", "mzk:dns-autoscaler"
    subjects = [{"apiGroup": group, "kind": "User", "name": user}]
    return [
        {"apiVersion": f"{group}/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]},
        {"apiVersion": f"{group}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": group, "kind": "ClusterRole", "name": name},
         "subjects": subjects},
        {"apiVersion": f"{group}/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": NAMESPACE},
         "rules": [{"apiGroups": ["apps"], "resources": ["deployments"],
                    "resourceNames": [DEPLOYMENT], "verbs": ["get", "patch"]}]},
        {"apiVersion": f"{group}/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": NAMESPACE},
         "roleRef": {"apiGroup": group, "kind": "Role", "name": name},
         "subjects": subjects},
    ]
