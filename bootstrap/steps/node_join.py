"""The control plane's side of nodes that join by themselves (auto-scaled, unknown at
`pulumi up`): per node pool a join token, the RBAC that lets its holders ask for a kubelet
client certificate and nothing more, and on every control-plane host the approver that
grants such requests only to verified instances (bootstrap.node.csr_approver).

JOIN_OBJECTS (together, on the first control-plane host whose API answers): the tokens are
rotated here (bootstrap.node.join_tokens says when) and kept beside the PKI for the Pulumi
program's user data; objects are compared with the facts' probe, so a converged cluster
costs no round trip. APPROVER (each control-plane host): the program and its service; a
cluster without node pools runs none (and a leftover is removed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from bootstrap.control_plane.config import ADMIN_CONF
from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.hostfiles import FileSpec, put_many
from bootstrap.inventory import Host, Inventory
from bootstrap.node import csr_approver, instance_identity, join_tokens
from bootstrap.node import kubelet_config as kc
from bootstrap.pki.table import LEAF_BY_NAME
from bootstrap.services import (
    Service,
    ServiceStatus,
    change_from_facts,
    inputs_digest,
    manager_from,
    unit_path,
)
from bootstrap.steps.cluster_objects import (
    FIELD_MANAGER,
    kubectl_path,
    parse_probe,
    probe_scripts,
)

APPROVER = "mzk-csr-approver"
PROGRAM = "/var/lib/mzk/bin/mzk-csr-approver"
IDENTITY_MODULE = "/var/lib/mzk/bin/instance_identity.py"  # imported by the program
STATUS_FILE = "/run/mzk/csr-approver.json"
LAB_RECORD = "/etc/mzk/lab-instances.json"  # the lab's record of its launched instances
APPROVER_USER = LEAF_BY_NAME["csr-approver"].cn
BOOTSTRAPPERS = "mzk:node-bootstrappers"
RULES_DIGEST = "mzk.io/rules-digest"
SERVICES = (APPROVER,)


def program_files() -> dict[str, bytes]:
    """The approver as shipped: its program and, beside it, its identity sources."""
    return {PROGRAM: Path(csr_approver.__file__).read_bytes(),
            IDENTITY_MODULE: Path(instance_identity.__file__).read_bytes()}


def _control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.control_plane


def watched_paths(ctx: HostContext) -> list[str]:
    return [*program_files(), unit_path(APPROVER)] if ctx.host.has("control-plane") else []


def identity_source(inventory: Inventory, lab: bool) -> str:
    """Where the approver checks instances: the lab's record, or EC2 in the cluster's
    region (from its zones' names)."""
    if lab:
        return f"lab:{LAB_RECORD}"
    return f"ec2:{kc.region_of(inventory.zones[0].name)}:{inventory.cluster.name}"


def approver_service(ctx: HostContext) -> Service:
    leaf = LEAF_BY_NAME["csr-approver"]
    python = ctx.facts.get("bin", {}).get("python3") or "/usr/bin/python3"
    command = [python, PROGRAM, "--server",
               f"https://{ctx.host.address}:{ctx.inventory.cluster.api_port}",
               "--ca", kc.CA_FILE, "--cert", leaf.cert_path, "--key", leaf.key_path,
               "--identity", identity_source(ctx.inventory, bool(ctx.facts.get("lab"))),
               "--status", STATUS_FILE]
    contents = {f.path: f.content for f in ctx.shared["pki"].hosts[ctx.name].files}
    program = hashlib.sha256(b"".join(program_files().values())).hexdigest()
    return Service(name=APPROVER, command_line=command,
                   env={"MZK_INPUTS": inputs_digest(program, command, contents)},
                   description="approves kubelet certificates of verified joined nodes")


def converge_approver(ctx: HostContext) -> None:
    states = ctx.facts.get("file_states") or {}
    status: ServiceStatus | None = ctx.facts.get("services", {}).get(APPROVER)
    manager = manager_from(ctx.name, bool(ctx.facts.get("lab")), bool(ctx.facts.get("systemd")))
    if not ctx.inventory.node_pools:
        if states.get(unit_path(APPROVER)) is None and not (status and status.running):
            return
        ctx.note(f"stop {APPROVER} and remove it (no node pools)")
        if not ctx.dry_run:
            manager.remove(ctx.runner, APPROVER)
            ctx.runner.run("rm -f " + " ".join(program_files()))
        return
    program = [FileSpec(path, content, 0o755 if path == PROGRAM else 0o644)
               for path, content in program_files().items()]
    todo = [f for f in program if states.get(f.path) != f.state()]
    wanted = approver_service(ctx)
    change = change_from_facts(wanted, states.get(unit_path(APPROVER)), status)
    for f in todo:
        ctx.note(f"write {f.path}")
        change = change or f"restart {APPROVER} (new program)"
    if todo and not ctx.dry_run:
        put_many(ctx.runner, todo)
    if change:
        ctx.note(change)
        if not ctx.dry_run:
            if not manager.ensure(ctx.runner, wanted):
                manager.restart(ctx.runner, APPROVER)


# --------------------------------------------------------------------------- objects


def _rules_digest(role: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(role["rules"], sort_keys=True).encode()).hexdigest()[:16]


def wanted_objects(inventory: Inventory) -> list[dict[str, Any]]:
    """The approver's role and binding (the binding carries its role's rules digest, so the
    probe's bindings tell whether the role is current) and the bootstrappers' binding."""
    role, binding = csr_approver.rbac_manifests(APPROVER_USER)
    binding["metadata"]["annotations"] = {RULES_DIGEST: _rules_digest(role)}
    group = "rbac.authorization.k8s.io"
    bootstrappers = {
        "apiVersion": f"{group}/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": BOOTSTRAPPERS},
        # Holders of a pool's token may create certificate requests, nothing else; their
        # requests are approved by our approver, never by the controller-manager's.
        "roleRef": {"apiGroup": group, "kind": "ClusterRole",
                    "name": "system:node-bootstrapper"},
        "subjects": [{"apiGroup": group, "kind": "Group",
                      "name": join_tokens.GROUP_PREFIX + p.name}
                     for p in inventory.node_pools]}
    return [role, binding, bootstrappers]


def _differs(have: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    if have is None:
        return True
    if want["kind"] == "ClusterRole":
        return False  # judged by its binding's digest
    notes = (have.get("metadata", {}).get("annotations") or {})
    return (have.get("roleRef") != want["roleRef"] or have.get("subjects") != want["subjects"]
            or any(notes.get(k) != v for k, v in
                   (want["metadata"].get("annotations") or {}).items()))


def converge_objects(group: list[HostContext]) -> None:
    if not group or not group[0].inventory.node_pools:
        return
    first = group[0]
    inventory = first.inventory
    state = first.facts.get("objects")
    if state is None and not first.dry_run:  # an API server that came up in this run
        state = parse_probe({name: first.runner.run(script, check=False).stdout
                             for name, script in probe_scripts(first).items()})
    if state is None:
        if first.dry_run:
            first.note("issue a join token per node pool and the RBAC for joining nodes "
                       "(once an API server is ready)")
            return
        raise StepError("no API server answered kubectl; check `python -m bootstrap check`")
    pki_dir = first.shared["pki"].out_dir
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stored = join_tokens.load(pki_dir)
    objects: list[dict[str, Any]] = []
    bindings = state.get("bindings", {})
    role, binding, bootstrappers = wanted_objects(inventory)
    if _differs(bindings.get(binding["metadata"]["name"]), binding):
        objects += [role, binding]
        first.note(f"grant {APPROVER_USER} its role (approve verified kubelet requests)")
    if _differs(bindings.get(BOOTSTRAPPERS), bootstrappers):
        objects.append(bootstrappers)
        first.note("let each node pool's token holders request kubelet certificates "
                   f"({', '.join(p.name for p in inventory.node_pools)})")
    secrets = set(state.get("token_secrets", ()))
    tokens, issued = join_tokens.refresh(inventory.node_pools, stored, now)
    for pool in inventory.node_pools:
        token = tokens[pool.name]
        if pool.name in issued:
            first.note(f"issue a join token for node pool {pool.name} "
                       f"({pool.join_token_hours} h)")
        elif token.secret_name in secrets:
            continue
        else:  # issued by the Pulumi program's check, or lost by the cluster
            first.note(f"install the join token of node pool {pool.name} in the cluster")
        objects.append(token.manifest())
    if first.dry_run or not objects:
        return
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    first.runner.run(f"{shlex.quote(kubectl_path(first))} --kubeconfig={ADMIN_CONF} "
                     f"--request-timeout=10s apply --server-side --field-manager={FIELD_MANAGER} "
                     "--force-conflicts -f - >/dev/null", stdin=body.encode())
    if tokens != stored:
        join_tokens.save(pki_dir, tokens)


JOIN_OBJECTS = Step("join-objects", _control_plane, run_together=converge_objects)
APPROVER_STEP = Step("csr-approver", _control_plane, run=converge_approver)
