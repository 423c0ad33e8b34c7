"""The pod network agent on every inventory node (auto-scaled nodes start it from their
user data): its program, its credential (a copy of the kubelet's client certificate and key,
0600) and its service, restarted only when one of them changed. With `cluster.cni:
external` the agent is stopped and its files removed: the cluster brings its own network.

Decided from the facts like every step: a converged node costs no round trip.
"""

from __future__ import annotations

import hashlib

from bootstrap.engine import HostContext, Step
from bootstrap.hostfiles import FileSpec, put_many
from bootstrap.inventory import Host, Inventory
from bootstrap.node import kubelet_config as kc
from bootstrap.node import pod_network_unit as unit
from bootstrap.pki import kubeconfig
from bootstrap.services import (
    Service,
    ServiceStatus,
    change_from_facts,
    inputs_digest,
    manager_from,
    unit_path,
)

SERVICES = (unit.NAME,)


def _nodes(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.nodes


def watched_paths(ctx: HostContext) -> list[str]:
    if not ctx.host.has("node"):
        return []
    return [*unit.program_files(), unit.CREDENTIAL, unit_path(unit.NAME)]


def _kubelet_conf(ctx: HostContext) -> bytes:
    contents = {f.path: f.content for f in ctx.shared["pki"].hosts[ctx.name].files}
    return contents[kc.KUBECONFIG]


def files(ctx: HostContext) -> list[FileSpec]:
    cert, key = kubeconfig.credentials(_kubelet_conf(ctx))
    found = [FileSpec(path, content, 0o755 if path == unit.PROGRAM else 0o644)
             for path, content in unit.program_files().items()]
    found.append(FileSpec(unit.CREDENTIAL, cert.rstrip(b"\n") + b"\n" + key, 0o600))
    return found


def agent_service(ctx: HostContext, wanted: list[FileSpec]) -> Service:
    c = ctx.inventory.cluster
    python = ctx.facts.get("bin", {}).get("python3") or unit.PYTHON
    command = unit.command(server=kubeconfig.parse(_kubelet_conf(ctx)).server,
                           credential=unit.CREDENTIAL, node=ctx.name,
                           cluster_cidr=c.pod_cidr, service_cidr=c.service_cidr,
                           python=python)
    contents = {f.path: f.content for f in wanted}
    program = hashlib.sha256(b"".join(unit.program_files().values())).hexdigest()
    return unit.service(command, {"MZK_INPUTS": inputs_digest(program, command, contents)})


def converge(ctx: HostContext) -> None:
    states = ctx.facts.get("file_states") or {}
    status: ServiceStatus | None = ctx.facts.get("services", {}).get(unit.NAME)
    manager = manager_from(ctx.name, bool(ctx.facts.get("lab")), bool(ctx.facts.get("systemd")))
    if ctx.inventory.cluster.cni != "bridge":
        present = [p for p in watched_paths(ctx) if states.get(p) is not None]
        if not present and not (status and status.running):
            return
        ctx.note(f"stop {unit.NAME} and remove it (cluster.cni is "
                 f"{ctx.inventory.cluster.cni})")
        if not ctx.dry_run:
            manager.remove(ctx.runner, unit.NAME)
            ctx.runner.run("rm -f " + " ".join(p for p in watched_paths(ctx)
                                               if p != unit_path(unit.NAME)))
        return
    wanted = files(ctx)
    todo = [f for f in wanted if states.get(f.path) != f.state()]
    service = agent_service(ctx, wanted)
    change = change_from_facts(service, states.get(unit_path(unit.NAME)), status)
    for f in todo:
        ctx.note(f"write {f.path}")
    if change:
        ctx.note(change)
    if ctx.dry_run:
        return
    if todo:
        put_many(ctx.runner, todo)
    if change:
        manager.ensure(ctx.runner, service)


POD_NETWORK = Step("pod-network", _nodes, run=converge)
