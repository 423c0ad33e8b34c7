"""What the cluster itself needs once an API server is ready, applied with kubectl on a
control-plane host over the SSH connection the bootstrap already holds (no port opened to
the operator):

- the binding that lets the API server's kubelet client (`kube-apiserver-kubelet-client`)
  use the kubelet API (`system:kubelet-api-admin`);
- the storage classes of the zones (bootstrap.storage_classes), the same objects the Pulumi
  program exports;
- Pod Security labels on every namespace there is (seed 004, part 4): `kube-system`
  privileged, with an annotation saying why; the others `baseline` enforced, `restricted`
  audited and warned, versions pinned. New namespaces get the same from the admission
  configuration's cluster defaults.

The objects' current state comes with the facts of the first control-plane host, so a
converged cluster costs no round trip here; only differing objects are applied
(server-side apply, field manager `multizone-k8s`).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from bootstrap import storage_classes
from bootstrap.control_plane.config import ADMIN_CONF, minor
from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.inventory import Host, Inventory
from bootstrap.services import LAB_MARKER

BINDING = "multizone-k8s:kube-apiserver-kubelet-client"
KUBELET_API_ROLE = "system:kubelet-api-admin"
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
FIELD_MANAGER = "multizone-k8s"
PSA = "pod-security.kubernetes.io"
REASON_KEY = "multizone-k8s/pod-security"
KUBE_SYSTEM_REASON = ("privileged: control-plane and node add-ons (network, storage, proxy) "
                      "need host namespaces and host paths; only cluster operators deploy "
                      "here")


def kubectl_path(ctx: HostContext) -> str:
    """The kubectl the binaries step settled on for this host (lab or release)."""
    return str(ctx.facts["k8s"]["kubectl"])


def _kubectl(kubectl: str) -> str:
    return (f"{shlex.quote(kubectl)} --kubeconfig={ADMIN_CONF} --request-timeout=5s")


def kubectl_get_script(ctx: HostContext, what: str) -> str:
    """`kubectl get <what> -o json` on a control-plane host with the admin credential (the
    lab's kubectl or the release's), printing only a whole answer: kubectl prints an empty
    List when the API does not answer, which must not read as an empty cluster (the caller
    then asks another host)."""
    local = ctx.shared.get("k8s_bin")
    lab_kubectl = shlex.quote(local.path("kubectl")) if local is not None else "/nonexistent"
    return (f"o=$(mktemp); if [ -f {LAB_MARKER} ]; then k={lab_kubectl}; "
            "else k=/usr/local/bin/kubectl; fi; "
            f"[ -x \"$k\" ] && [ -f {ADMIN_CONF} ] && \"$k\" "
            f"--kubeconfig={ADMIN_CONF} --request-timeout=3s get {what} -o json "
            "> \"$o\" && cat \"$o\"; rm -f \"$o\"")


def probe_scripts(ctx: HostContext) -> dict[str, str]:
    """One command (run beside the other facts): every namespace and cluster role binding
    as JSON (one kubectl start, the costly part); nothing when no API server answers yet."""
    return {"objects": kubectl_get_script(ctx, "namespaces,clusterrolebindings,nodes,"
                                               "storageclasses")}


def parse_probe(outputs: dict[str, str]) -> dict[str, Any] | None:
    """{"namespaces": [...], "binding": {...} | None, "nodes": {name: node}, "bindings":
    {name: binding}, "storage_classes": {name: class}}, or None if the API did not answer."""
    try:
        items = json.loads(outputs.get("objects", ""))["items"]
        namespaces = [i for i in items if i["kind"] == "Namespace"]
        bound = next((i for i in items if i["kind"] == "ClusterRoleBinding"
                      and i["metadata"]["name"] == BINDING), None)
    except (ValueError, KeyError, TypeError):
        return None
    nodes = {i["metadata"]["name"]: i for i in items if i["kind"] == "Node"}
    bindings = {i["metadata"]["name"]: i for i in items if i["kind"] == "ClusterRoleBinding"}
    classes = {i["metadata"]["name"]: i for i in items if i["kind"] == "StorageClass"}
    return {"namespaces": namespaces, "binding": bound, "nodes": nodes, "bindings": bindings,
            "storage_classes": classes}


def namespace_labels(name: str, kubernetes_version: str) -> dict[str, str]:
    v = minor(kubernetes_version)
    levels = (("privileged",) * 3 if name == "kube-system"
              else ("baseline", "restricted", "restricted"))
    labels = {}
    for mode, level in zip(("enforce", "audit", "warn"), levels, strict=True):
        labels[f"{PSA}/{mode}"] = level
        labels[f"{PSA}/{mode}-version"] = v
    return labels


def binding_object() -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": BINDING},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": KUBELET_API_ROLE},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": KUBELET_CLIENT_USER}]}


def differing(state: dict[str, Any], kubernetes_version: str, zones: Sequence[str] = ()
              ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(objects to apply, one line per object saying what changes, storage classes to
    delete first: a class's provisioner, parameters or topology cannot change in place)."""
    objects: list[dict[str, Any]] = []
    lines: list[str] = []
    replace: list[str] = []
    have_classes = state.get("storage_classes") or {}
    for want in storage_classes.manifests(zones) if zones else []:
        name = want["metadata"]["name"]
        change = storage_classes.differs(have_classes.get(name), want)
        if change:
            objects.append(want)
            lines.append(f"{change} storage class {name}")
            if change == "replace":
                replace.append(name)
    for ns in sorted(state["namespaces"], key=lambda n: n["metadata"]["name"]):
        meta = ns["metadata"]
        name = meta["name"]
        if meta.get("deletionTimestamp"):
            continue
        want = namespace_labels(name, kubernetes_version)
        have = meta.get("labels") or {}
        annotations = {REASON_KEY: KUBE_SYSTEM_REASON} if name == "kube-system" else {}
        have_notes = meta.get("annotations") or {}
        if any(have.get(k) != v for k, v in want.items()) or any(
                have_notes.get(k) != v for k, v in annotations.items()):
            body: dict[str, Any] = {"name": name, "labels": want}
            if annotations:
                body["annotations"] = annotations
            objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": body})
            lines.append(f"label namespace {name}: pod security "
                         f"{want[PSA + '/enforce']} enforced, {want[PSA + '/warn']} warned")
    bound = state.get("binding")
    wanted = binding_object()
    if not bound or bound.get("roleRef") != wanted["roleRef"] or bound.get("subjects") != \
            wanted["subjects"]:
        objects.append(wanted)
        lines.append(f"bind {KUBELET_CLIENT_USER} to {KUBELET_API_ROLE}")
    return objects, lines, replace


def converge(group: list[HostContext]) -> None:
    """On one control-plane host whose API server answers: compare, apply what differs."""
    if not group:
        return
    first = group[0]
    state = first.facts.get("objects")
    errors = []
    for ctx in group:
        if state is None or ctx is not first:
            state = parse_probe({name: ctx.runner.run(script, check=False).stdout
                                 for name, script in probe_scripts(ctx).items()})
            if state is None:
                errors.append(ctx.name)
                continue
            first.facts["objects"] = state  # for the steps after this one
        objects, lines, replace = differing(state, ctx.inventory.cluster.kubernetes_version,
                                            [z.name for z in ctx.inventory.zones])
        for line in lines:  # on the first host whichever answered: plan reads as apply
            first.note(line)
        if replace and not ctx.dry_run:
            ctx.runner.run(f"{_kubectl(kubectl_path(ctx))} delete storageclass "
                           + " ".join(shlex.quote(n) for n in replace))
        if objects and not ctx.dry_run:
            body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
            ctx.runner.run(f"{_kubectl(kubectl_path(ctx))} apply --server-side "
                           f"--field-manager={FIELD_MANAGER} --force-conflicts -f -",
                           stdin=body.encode())
        return
    if first.dry_run:
        first.note("label every namespace with pod security levels and bind "
                   f"{KUBELET_CLIENT_USER} (once an API server is ready)")
        return
    raise StepError(f"no API server answered kubectl on {', '.join(errors)}; check "
                    "`python -m bootstrap check` and the kube-apiserver logs")


def _control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.control_plane


CLUSTER_OBJECTS = Step("cluster-objects", _control_plane, run_together=converge)
