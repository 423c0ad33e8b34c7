"""The control plane's side of nodes that join by themselves (auto-scaled, unknown at
`pulumi up`): the RBAC that lets a verified instance ask for a kubelet client certificate and
nothing more, and on every control-plane host the approver that authenticates instances by
their cloud-signed identity (the API server's token webhook) and grants their requests
(bootstrap.node.csr_approver, bootstrap.node.identity_webhook).

There is no join token any more: nothing to issue, rotate or hand to the node pools; a node's
credential is its instance identity document (bootstrap.node.join).

JOIN_OBJECTS (together, on the first control-plane host whose API answers): the approver's
role and the bootstrappers' binding, compared with the facts' probe, so a converged cluster
costs no round trip. APPROVER (each control-plane host): the program and the modules it
imports, the trust file (whose signatures on identity documents count: the inventory's
`cluster.instance_identity_trust`, else AWS's pinned certificate for the region) and its
service, which also serves the webhook on loopback; all compared by digest with the facts.
A cluster without node pools runs none (and a leftover is removed).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from bootstrap.addons import dns_scale
from bootstrap.control_plane.config import ADMIN_CONF
from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.hostfiles import FileSpec, put_many
from bootstrap.inventory import Host, Inventory
from bootstrap.node import aws_identity_certs, csr_approver, dns_autoscaler, identity_webhook
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
BIN_DIR = "/var/lib/mzk/bin"
PROGRAM = f"{BIN_DIR}/mzk-csr-approver"
TRUST_FILE = "/etc/mzk/instance-identity-trust.pem"
STATUS_FILE = "/run/mzk/csr-approver.json"
LAB_RECORD = "/etc/mzk/lab-instances.json"  # the lab's record of its launched instances
WEBHOOK_LISTEN = f"{identity_webhook.WEBHOOK_HOST}:{identity_webhook.WEBHOOK_PORT}"
APPROVER_USER = LEAF_BY_NAME["csr-approver"].cn
BOOTSTRAPPERS = "mzk:node-bootstrappers"
RULES_DIGEST = "mzk.io/rules-digest"
SERVICES = (APPROVER,)


def program_files() -> dict[str, bytes]:
    """The approver as shipped: its program and, beside it, the modules it imports."""
    source = Path(csr_approver.__file__).parent
    addons = Path(dns_scale.__file__).parent
    return {PROGRAM: Path(csr_approver.__file__).read_bytes(),
            **{f"{BIN_DIR}/{name}.py": (source / f"{name}.py").read_bytes()
               for name in csr_approver.COMPANIONS},
            **{f"{BIN_DIR}/{name}.py": (addons / f"{name}.py").read_bytes()
               for name in dns_autoscaler.COMPANIONS}}


def identity_trust(inventory: Inventory) -> bytes:
    """Whose signatures on identity documents the approver accepts: the inventory's
    (the lab's "cloud"), else AWS's pinned certificate for the cluster's region."""
    if inventory.cluster.instance_identity_trust is not None:
        return inventory.cluster.instance_identity_trust.encode()
    region = kc.region_of(inventory.zones[0].name)
    try:
        return aws_identity_certs.certificate_for(region).encode()
    except ValueError as err:
        raise StepError(" ".join(str(err).split())) from err


def _control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.control_plane


def watched_paths(ctx: HostContext) -> list[str]:
    if not ctx.host.has("control-plane"):
        return []
    return [*program_files(), TRUST_FILE, unit_path(APPROVER)]


def identity_source(inventory: Inventory, lab: bool) -> str:
    """Where the approver looks instances up by ID: the lab's record, or EC2 in the
    cluster's region (from its zones' names)."""
    if lab:
        return f"lab:{LAB_RECORD}"
    return f"ec2:{kc.region_of(inventory.zones[0].name)}:{inventory.cluster.name}"


def approver_service(ctx: HostContext, trust: bytes) -> Service:
    leaf = LEAF_BY_NAME["csr-approver"]
    python = ctx.facts.get("bin", {}).get("python3") or "/usr/bin/python3"
    command = [python, PROGRAM, "--server",
               f"https://{ctx.host.address}:{ctx.inventory.cluster.api_port}",
               "--ca", kc.CA_FILE, "--cert", leaf.cert_path, "--key", leaf.key_path,
               "--identity", identity_source(ctx.inventory, bool(ctx.facts.get("lab"))),
               "--identity-trust", TRUST_FILE, "--webhook-listen", WEBHOOK_LISTEN,
               "--status", STATUS_FILE, "--dns-zones", str(len(ctx.inventory.zones)),
               "--dns-nodes-per-replica", str(ctx.inventory.cluster.dns.nodes_per_replica),
               "--dns-max-replicas", str(ctx.inventory.cluster.dns.max_replicas)]
    contents = {f.path: f.content for f in ctx.shared["pki"].hosts[ctx.name].files}
    contents[TRUST_FILE] = trust
    program = hashlib.sha256(b"".join(program_files().values())).hexdigest()
    return Service(name=APPROVER, command_line=command,
                   env={"MZK_INPUTS": inputs_digest(program, command, contents)},
                   description="authenticates joining instances by their cloud-signed "
                               "identity and approves their kubelet certificates")


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
            ctx.runner.run("rm -f " + " ".join([*program_files(), TRUST_FILE]))
        return
    trust = identity_trust(ctx.inventory)
    wanted_files = [FileSpec(path, content, 0o755 if path == PROGRAM else 0o644)
                    for path, content in program_files().items()]
    wanted_files.append(FileSpec(TRUST_FILE, trust, 0o644))  # public keys only
    todo = [f for f in wanted_files if states.get(f.path) != f.state()]
    wanted = approver_service(ctx, trust)
    change = change_from_facts(wanted, states.get(unit_path(APPROVER)), status)
    for f in todo:
        ctx.note(f"write {f.path}")
        change = change or f"restart {APPROVER} (new program or trust)"
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
        # Instances the webhook authenticated into a pool may create certificate requests,
        # nothing else; our approver decides them, never the controller-manager's.
        "roleRef": {"apiGroup": group, "kind": "ClusterRole",
                    "name": "system:node-bootstrapper"},
        "subjects": [{"apiGroup": group, "kind": "Group",
                      "name": identity_webhook.POOL_GROUP + p.name}
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
            first.note("grant the RBAC for joining nodes (once an API server is ready)")
            return
        raise StepError("no API server answered kubectl; check `python -m bootstrap check`")
    objects: list[dict[str, Any]] = []
    bindings = state.get("bindings", {})
    role, binding, bootstrappers = wanted_objects(inventory)
    if _differs(bindings.get(binding["metadata"]["name"]), binding):
        objects += [role, binding]
        first.note(f"grant {APPROVER_USER} its role (approve verified kubelet requests)")
    if _differs(bindings.get(BOOTSTRAPPERS), bootstrappers):
        objects.append(bootstrappers)
        first.note("let each node pool's verified instances request kubelet certificates "
                   f"({', '.join(p.name for p in inventory.node_pools)})")
    if first.dry_run or not objects:
        return
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    first.runner.run(f"{shlex.quote(kubectl_path(first))} --kubeconfig={ADMIN_CONF} "
                     f"--request-timeout=10s apply --server-side --field-manager={FIELD_MANAGER} "
                     "--force-conflicts -f - >/dev/null", stdin=body.encode())


JOIN_OBJECTS = Step("join-objects", _control_plane, run_together=converge_objects)
APPROVER_STEP = Step("csr-approver", _control_plane, run=converge_approver)
