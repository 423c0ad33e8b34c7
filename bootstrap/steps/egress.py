"""The control plane's half of the egress path: on every control-plane host, the service
behind the API server's egress socket (`bootstrap.egress.hostconfig.SOCKET`).

- `ssh-tunnel`: our tunnel service (`bootstrap/egress/tunnel_service.py`, shipped as
  /var/lib/mzk/bin/mzk-egress-tunnel with its companion modules beside it), with this host's
  tunnel key, the nodes' pinned host keys and its configuration under /etc/mzk/egress;
- `konnectivity`: the proxy-server.

One host at a time when the host serves egress already (a restart, or a switch of mode):
stop the old service, start the new one on the same socket, and wait until it reaches the
nodes (every tunnel up, or every agent connected) before the next host; so at most one API
server is without its way to the nodes, for about a second. Hosts that serve nothing yet
start side by side. The files of the mode left behind go in the same host's turn.
Decided from the facts: a converged host costs no round trip.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bootstrap.egress import hostconfig, tunnel_access, tunnel_service
from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.host_fanout import run_on_hosts
from bootstrap.hostfiles import FileSpec, put_many
from bootstrap.inventory import Host, Inventory
from bootstrap.services import (
    Service,
    ServiceStatus,
    change_from_facts,
    inputs_digest,
    manager_from,
    unit_path,
)

TUNNEL_BIN_DIR = "/var/lib/mzk/bin"
TUNNEL_PROGRAM = f"{TUNNEL_BIN_DIR}/mzk-egress-tunnel"


def _tunnel_program_files() -> dict[str, bytes]:
    """The tunnel service as shipped: its program and, beside it, the modules it imports."""
    source = Path(tunnel_service.__file__)
    return {TUNNEL_PROGRAM: source.read_bytes(),
            **{f"{TUNNEL_BIN_DIR}/{name}.py": source.with_name(f"{name}.py").read_bytes()
               for name in tunnel_service.COMPANIONS}}


TUNNEL_PROGRAM_FILES = _tunnel_program_files()
TUNNEL_CONFIG = "/etc/mzk/egress/tunnel.json"
TUNNEL_FILES = (*TUNNEL_PROGRAM_FILES, TUNNEL_CONFIG, tunnel_access.IDENTITY,
                tunnel_access.KNOWN_HOSTS)
SERVICES = (hostconfig.TUNNEL, hostconfig.PROXY_SERVER)
READY_TIMEOUT_S = 30
_ADMIN_METRICS = f"http://127.0.0.1:{hostconfig.ADMIN_PORT}/metrics"
# Agents connected to this proxy-server (one gRPC Connect stream each); the "ready backends"
# gauges count an agent once per identifier.
_READY_METRIC = 'konnectivity_network_proxy_server_grpc_connections{service_method="Connect"}'



def _shq(text: str) -> str:
    """Inside an awk string inside single quotes: escape the metric's double quotes."""
    return text.replace('"', '\\"')


def _control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.control_plane


def watched_paths(ctx: HostContext) -> list[str]:
    if not ctx.host.has("control-plane"):
        return []  # other hosts: TRACES_PATHS, by shell globs, for egress-retire
    return [*TUNNEL_FILES, *(unit_path(s) for s in SERVICES)]


def tunnel_ports(inventory: Inventory) -> tuple[int, ...]:
    return tuple(sorted({hostconfig.KUBELET_PORT, *inventory.cluster.egress_node_ports}))


def _tunnel_files(ctx: HostContext) -> list[FileSpec]:
    inventory = ctx.inventory
    nodes = [h for h in inventory.nodes if h.name != ctx.name]
    ports = tunnel_ports(inventory)
    config = tunnel_access.service_config(
        [tunnel_access.TunnelNode(h.name, h.address, h.ssh_port, ports) for h in nodes],
        user=inventory.ssh.user, connect_timeout=inventory.ssh.connect_timeout,
        socket=hostconfig.SOCKET)
    key = ctx.shared["tunnel_keys"].keys[ctx.name]
    return [*(FileSpec(path, content, 0o755 if path == TUNNEL_PROGRAM else 0o644)
              for path, content in TUNNEL_PROGRAM_FILES.items()),
            FileSpec(TUNNEL_CONFIG, config, 0o644),
            FileSpec(tunnel_access.IDENTITY, key.private_pem, 0o600),
            FileSpec(tunnel_access.KNOWN_HOSTS, tunnel_access.known_hosts(
                (h.address, h.ssh_port, h.host_key) for h in nodes), 0o644)]


def _service(ctx: HostContext, files: list[FileSpec]) -> Service:
    if ctx.inventory.cluster.egress == "ssh-tunnel":
        python = ctx.facts.get("bin", {}).get("python3") or "/usr/bin/python3"
        command = [python, TUNNEL_PROGRAM, "--config", TUNNEL_CONFIG]
        contents = {f.path: f.content for f in files}
        return Service(hostconfig.TUNNEL, command,
                       env={"MZK_INPUTS": inputs_digest("", command, contents)},
                       description="multizone-k8s egress: SSH tunnels to the nodes")
    binary, identity = ctx.facts["konnectivity"], ctx.facts["konnectivity_id"]
    command = hostconfig.proxy_server_command(ctx.inventory, ctx.host, binary)
    contents = {f.path: f.content for f in ctx.shared["pki"].hosts[ctx.name].files}
    return Service(hostconfig.PROXY_SERVER, command,
                   env={"MZK_INPUTS": inputs_digest(identity, command, contents)},
                   after=("kube-apiserver",),
                   description="Konnectivity server: the API server's way to the nodes")


@dataclass
class HostPlan:
    ctx: HostContext
    service: Service
    files: list[FileSpec]  # to write
    remove: list[str]  # files of the mode left behind
    start: str | None  # why the service (re)starts, or None
    stop: str | None  # the other mode's service, if it runs or has a unit
    serving: bool  # whether any egress service runs on the host now
    lines: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.files or self.remove or self.start or self.stop)


def plan_host(ctx: HostContext) -> HostPlan:
    tunnel = ctx.inventory.cluster.egress == "ssh-tunnel"
    states = ctx.facts.get("file_states") or {}
    status: dict[str, ServiceStatus] = ctx.facts.get("services", {})
    wanted = _tunnel_files(ctx) if tunnel else []
    service = _service(ctx, wanted)
    other = hostconfig.PROXY_SERVER if tunnel else hostconfig.TUNNEL
    other_status = status.get(other)
    stop = other if (states.get(unit_path(other)) is not None
                     or (other_status is not None and other_status.running)) else None
    files = [f for f in wanted if states.get(f.path, "?") != f.state()]
    remove = [] if tunnel else [p for p in TUNNEL_FILES if states.get(p, "?") is not None]
    start = change_from_facts(service, states.get(unit_path(service.name)),
                              status.get(service.name))
    serving = any(s is not None and s.running for s in (status.get(n) for n in SERVICES))
    return HostPlan(ctx, service, files, remove, start, stop, serving)


def roll_host(plan: HostPlan, must_reach: bool = True) -> None:
    ctx = plan.ctx
    for f in plan.files:
        ctx.note(f"write {f.path}")
    if plan.stop:
        ctx.note(f"stop {plan.stop} and remove its unit (egress is "
                 f"{ctx.inventory.cluster.egress})")
    for path in plan.remove:
        ctx.note(f"remove {path} (egress is {ctx.inventory.cluster.egress})")
    if plan.start:
        ctx.note(plan.start)
    if ctx.dry_run:
        return
    manager = manager_from(ctx.name, bool(ctx.facts.get("lab")), bool(ctx.facts.get("systemd")))
    ctx.runner.run(f"install -d -m 0700 {shlex.quote(hostconfig.SOCKET_DIR)}")
    if plan.files:
        put_many(ctx.runner, plan.files)
    if plan.stop:
        manager.remove(ctx.runner, plan.stop)
    leftovers = plan.remove + ([tunnel_access.STATUS] if plan.stop == hostconfig.TUNNEL else [])
    if leftovers:
        ctx.runner.run("rm -f -- " + " ".join(shlex.quote(p) for p in leftovers))
    if plan.start or plan.stop:
        manager.ensure(ctx.runner, plan.service)
        wait_reaching_nodes(ctx, must_reach=must_reach)


def wait_reaching_nodes(ctx: HostContext, timeout: float = READY_TIMEOUT_S,
                        must_reach: bool = True) -> None:
    """Until the new service reaches every node; past `timeout`, go on if it reaches some
    (a node that is down must not stop the cluster's apply, and is named), and stop a
    roll if it reaches none (the next host must keep its working egress). A host that
    served nothing before (`must_reach` false) only says so; `check` names it too."""
    nodes = [h for h in ctx.inventory.nodes if h.name != ctx.name]
    if not nodes:
        return
    probe = reach_probe(ctx)
    tries = int(timeout / 0.25)
    out = ctx.runner.run(f"for i in $(seq 1 {tries}); do r=$({probe}); "
                         f"[ \"$r\" = {len(nodes)} ] && break; sleep 0.25; done; echo \"$r\"",
                         check=False, timeout=timeout + 30).stdout.strip()
    reached = int(out) if out.isdigit() else 0
    if reached == len(nodes):
        return
    if reached == 0 and must_reach:
        raise StepError(f"{ctx.name}: {ctx.inventory.cluster.egress} egress reaches no node "
                        f"after {timeout:.0f} s; see /var/lib/mzk/log/{ctx_service(ctx)}.log "
                        "(or journalctl); the other control-plane hosts were left as they were")
    # A state, not a change (the plan could not have said it): a warning, as `check` says.
    print(f"warning: {ctx.name}: {ctx.inventory.cluster.egress} egress reaches {reached} of "
          f"{len(nodes)} nodes after {timeout:.0f} s; `check` names the others",
          file=sys.stderr)


def ctx_service(ctx: HostContext) -> str:
    return hostconfig.TUNNEL if ctx.inventory.cluster.egress == "ssh-tunnel" \
        else hostconfig.PROXY_SERVER


def reach_probe(ctx: HostContext) -> str:
    """Shell printing how many nodes this host's egress service reaches now."""
    if ctx.inventory.cluster.egress == "ssh-tunnel":
        python = ctx.facts.get("bin", {}).get("python3") or "python3"
        return (f"o=$({python} {TUNNEL_PROGRAM} --config {TUNNEL_CONFIG} --check 2>/dev/null)"
                "; case \"$o\" in *'service: answering'*) echo \"$o\" | grep -c ': tunnel up'"
                ";; *) echo 0;; esac")
    return (f"curl -s --max-time 2 {_ADMIN_METRICS} 2>/dev/null | "
            f"awk '$1 == \"{_shq(_READY_METRIC)}\" {{n+=$2}} END {{print n+0}}'")


def check_script(inventory: Inventory, host: Host, python: str = "python3") -> str:
    """For `check`: the mode, how many nodes this host's egress should reach, how many it
    does, and (SSH tunnels) each node that is down with the reason."""
    nodes = [h for h in inventory.nodes if h.name != host.name]
    lines = [f'echo "egress {inventory.cluster.egress} {len(nodes)}"']
    if inventory.cluster.egress == "ssh-tunnel":
        lines.append(f"{python} {TUNNEL_PROGRAM} --config {TUNNEL_CONFIG} --check 2>&1 | "
                     "sed 's/^/egress-line /'")
    else:
        count = f"$1 == \"{_shq(_READY_METRIC)}\" {{n+=$2}}"
        lines.append(f"curl -s --max-time 2 {_ADMIN_METRICS} 2>/dev/null | awk "
                     f"'{count} END {{print \"egress-agents \" n+0}}'")
    return "\n".join(lines) + "\n"


def converge(group: list[HostContext]) -> None:
    if not group:
        return
    limit = group[0].inventory.ssh.parallel
    plans = {c.name: plan_host(c) for c in group}
    todo = [plans[c.name] for c in group if plans[c.name].changed]
    fresh = [p for p in todo if not p.serving]
    serving = [p for p in todo if p.serving]
    if fresh:  # nothing to keep serving: a host that reaches no node yet is named, not fatal
        run_on_hosts([p.ctx for p in fresh],
                     lambda c: roll_host(plans[c.name], must_reach=False), limit,
                     title="egress", progress=_quiet)
    for plan in serving:  # one at a time: the others keep their way to the nodes
        roll_host(plan)


def retire(ctx: HostContext) -> None:
    """A host that left the control plane: its egress service and files go."""
    present = list(ctx.facts.get("egress_traces", ()))
    if not present:
        return
    ctx.note("stop the egress services and remove their files (no longer a control-plane "
             "host)")
    if ctx.dry_run:
        return
    manager = manager_from(ctx.name, bool(ctx.facts.get("lab")), bool(ctx.facts.get("systemd")))
    for name in SERVICES:
        manager.stop(ctx.runner, name)
    ctx.runner.run("rm -f -- " + " ".join(shlex.quote(p) for p in present))


TRACES_PATHS = [*TUNNEL_FILES, *(unit_path(s) for s in SERVICES)]


def _quiet(_host: str, _title: str, _state: str) -> None:
    pass


def _not_control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return tuple(h for h in inventory.hosts if not h.has("control-plane"))


EGRESS = Step("egress", _control_plane, run_together=converge)
EGRESS_RETIRE = Step("egress-retire", _not_control_plane, run=retire)
