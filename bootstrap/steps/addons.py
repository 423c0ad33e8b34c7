"""Cluster add-ons, one mechanism for all: render every add-on's objects from the
inventory, compare them with what the API holds, apply what differs (server-side, field
manager `multizone-k8s`) and delete what we made before and no longer render (pruning).

Each rendered object carries the digest of its rendering (annotation `mzk.io/rendered`):
the facts round trip reads every object with our add-on label (one kubectl call on the first
control-plane host), so a converged cluster costs no round trip here. What we render:

- kube-proxy (bootstrap.addons.kube_proxy) and CoreDNS (bootstrap.addons.coredns) on every
  cluster; the lab's pre-made volumes (bootstrap.addons.lab_volumes) in the lab; the EBS CSI
  driver (bootstrap.addons.ebs_csi) on AWS, where its volumes exist.

Images: in the lab, archives built on this machine (bootstrap.addons.lab_images; the nodes
step imports them); on real hosts the official images pinned by digest
(bootstrap.addons.images), checked before any host is touched (`pinned_images`).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Any

from bootstrap.addons import coredns, kube_proxy, lab_volumes, pod_network
from bootstrap.addons.context import AddonContext
from bootstrap.control_plane.config import ADMIN_CONF
from bootstrap.engine import HostContext, Step
from bootstrap.errors import ConfigError, StepError
from bootstrap.inventory import Host, Inventory
from bootstrap.node import dns_autoscaler
from bootstrap.steps.cluster_objects import FIELD_MANAGER, kubectl_get_script, kubectl_path
from bootstrap.steps.node_join import APPROVER_USER

ADDON_LABEL = "mzk.io/addon"
MANAGED_BY = "app.kubernetes.io/managed-by"
RENDERED = "mzk.io/rendered"
# Every kind an add-on may render: what the probe reads and pruning may delete.
KINDS = ("serviceaccounts", "configmaps", "services", "deployments.apps", "daemonsets.apps",
         "poddisruptionbudgets.policy", "clusterroles.rbac.authorization.k8s.io",
         "clusterrolebindings.rbac.authorization.k8s.io", "roles.rbac.authorization.k8s.io",
         "rolebindings.rbac.authorization.k8s.io", "csidrivers.storage.k8s.io",
         "persistentvolumes")
REAL_IMAGES = ("kube-proxy", "coredns")


def pinned_images(inventory: Inventory) -> dict[str, str]:
    """Real hosts: every add-on image pinned by digest; a ConfigError (exit 2, nothing
    touched) names what is missing."""
    from bootstrap.addons import ebs_csi, images

    version = inventory.cluster.kubernetes_version
    try:
        return {name: images.image_for(name, version)
                for name in (*REAL_IMAGES, *ebs_csi.IMAGES)}
    except ValueError as err:
        raise ConfigError(f"{inventory.source}: cluster.kubernetes_version: {err}") from err


def context(inventory: Inventory, lab_images: dict[str, Any] | None, node_count: int
            ) -> AddonContext:
    c = inventory.cluster
    lab = lab_images is not None
    images = ({n: i.ref for n, i in lab_images.items()} if lab_images is not None
              else pinned_images(inventory))
    return AddonContext(
        cluster_name=c.name, kubernetes_version=c.kubernetes_version,
        zones=tuple(z.name for z in inventory.zones),
        zone_endpoints={z.name: z.endpoint.url for z in inventory.zones},
        regional_endpoint=inventory.regional_endpoint.url, service_cidr=c.service_cidr,
        pod_cidr=c.pod_cidr, dns_address=c.dns_address, dns_domain=c.dns_domain,
        node_count=node_count, lab=lab, images=images, pod_network=c.cni == "bridge")


def _stamped(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with the digest of its rendering in an annotation."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    meta = dict(obj["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), RENDERED: digest}
    return {**obj, "metadata": meta}


def rendered(actx: AddonContext, rule: Any = None) -> list[dict[str, Any]]:
    """Every add-on object, stamped, in apply order (add-on by add-on)."""
    objects = [*(pod_network.manifests(actx) if actx.pod_network else []),
               *kube_proxy.manifests(actx), *coredns.manifests(actx, rule),
               *_labelled(dns_autoscaler.rbac_manifests(APPROVER_USER), "coredns")]
    if actx.lab:
        objects += lab_volumes.manifests(actx)
    else:
        from bootstrap.addons import ebs_csi
        objects += ebs_csi.manifests(actx)
    return [_stamped(o) for o in objects]


def _labelled(objects: list[dict[str, Any]], addon: str) -> list[dict[str, Any]]:
    for obj in objects:
        obj["metadata"]["labels"] = {**(obj["metadata"].get("labels") or {}),
                                     MANAGED_BY: "multizone-k8s", ADDON_LABEL: addon}
    return objects


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def probe_scripts(ctx: HostContext) -> dict[str, str]:
    """One kubectl call beside the other facts: every object carrying our add-on label."""
    return {"addons": kubectl_get_script(
        ctx, f"{','.join(KINDS)} -A -l {ADDON_LABEL},{MANAGED_BY}=multizone-k8s")}


def parse_probe(outputs: dict[str, str]) -> dict[tuple[str, str, str], str] | None:
    """(kind, namespace, name) -> the rendering digest it carries; None: no answer."""
    try:
        items = json.loads(outputs.get("addons", ""))["items"]
        return {key(i): (i["metadata"].get("annotations") or {}).get(RENDERED, "")
                for i in items}
    except (ValueError, KeyError, TypeError):
        return None


def plan(have: dict[tuple[str, str, str], str], want: list[dict[str, Any]]
         ) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]], list[str]]:
    """(objects to apply, keys to delete, one line per add-on saying what changes)."""
    apply, lines = [], []
    by_addon: dict[str, list[str]] = {}
    wanted = {key(o) for o in want}
    for obj in want:
        k = key(obj)
        digest = obj["metadata"]["annotations"][RENDERED]
        if have.get(k) == digest:
            continue
        apply.append(obj)
        addon = obj["metadata"]["labels"][ADDON_LABEL]
        by_addon.setdefault(addon, []).append(
            f"{'create' if k not in have else 'update'} {k[0]} "
            f"{k[1] + '/' if k[1] else ''}{k[2]}")
    for addon, changes in by_addon.items():
        lines.append(f"add-on {addon}: {', '.join(changes)}")
    prune = sorted(k for k in have if k not in wanted)
    for kind, ns, name in prune:
        lines.append(f"remove {kind} {ns + '/' if ns else ''}{name} (no longer rendered)")
    return apply, prune, lines


_RESOURCE = {"ServiceAccount": "serviceaccount", "ConfigMap": "configmap",
             "Service": "service", "Deployment": "deployments.apps",
             "DaemonSet": "daemonsets.apps", "PodDisruptionBudget": "poddisruptionbudgets.policy",
             "ClusterRole": "clusterroles.rbac.authorization.k8s.io",
             "ClusterRoleBinding": "clusterrolebindings.rbac.authorization.k8s.io",
             "Role": "roles.rbac.authorization.k8s.io",
             "RoleBinding": "rolebindings.rbac.authorization.k8s.io",
             "CSIDriver": "csidrivers.storage.k8s.io", "PersistentVolume": "persistentvolumes"}


def _node_count(first: HostContext) -> int:
    nodes = (first.facts.get("objects") or {}).get("nodes")
    return len(nodes) if nodes else len(first.inventory.nodes)


def converge(group: list[HostContext]) -> None:
    """On the first control-plane host whose API answers (the facts' answer first); what
    changes is noted on the group's first host whichever answered, so that a plan made
    while that host was down reads as the apply made after it came back."""
    if not group:
        return
    first = group[0]
    have, answered = first.facts.get("addons_state"), first
    for ctx in group if have is None else ():
        have = parse_probe({n: ctx.runner.run(s, check=False).stdout
                            for n, s in probe_scripts(ctx).items()})
        if have is not None:
            answered = ctx
            break
    if have is None:
        if first.dry_run:
            first.note("apply the add-ons: kube-proxy, CoreDNS (once an API server is ready)")
            return
        raise StepError("no API server answered kubectl; check `python -m bootstrap check`")
    actx = context(first.inventory, first.shared.get("lab_images"), _node_count(first))
    apply, prune, lines = plan(have, rendered(actx, first.inventory.cluster.dns))
    for line in lines:
        first.note(line)
    if first.dry_run:
        return
    kubectl = (f"{shlex.quote(kubectl_path(answered))} --kubeconfig={ADMIN_CONF} "
               "--request-timeout=20s")
    if apply:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": apply})
        answered.runner.run(f"{kubectl} apply --server-side --field-manager={FIELD_MANAGER} "
                            "--force-conflicts -f - >/dev/null", stdin=body.encode())
    for kind, ns, name in prune:
        where = f" -n {shlex.quote(ns)}" if ns else ""
        answered.runner.run(f"{kubectl} delete {_RESOURCE.get(kind, kind)} "
                            f"{shlex.quote(name)}{where} --ignore-not-found --wait=false "
                            ">/dev/null")


def _control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.control_plane


ADDONS = Step("addons", _control_plane, run_together=converge)
