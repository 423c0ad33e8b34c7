"""The control plane on every control-plane host: kube-apiserver, then (once it is ready)
kube-controller-manager and kube-scheduler, rolled out without downtime.

Each unit carries `MZK_INPUTS`, a digest of its binary's identity and of every file its
command line names (certificates, kubeconfigs, configuration): a new binary, certificate
or flag changes the unit, and a changed unit restarts its service. What a host needs is
decided from the facts (file states and service states gathered in the facts round trip),
so a converged control plane costs no round trip here.

Rolling: hosts whose API server is not running (a new cluster, a new host) start together;
hosts whose API server runs are changed one at a time, the next only after the changed
one answers `/readyz` again, so there is never a moment without a ready API server. The
controller-manager and the scheduler start only after their own API server is ready.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bootstrap.control_plane import config
from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.host_fanout import run_on_hosts
from bootstrap.hostfiles import FileSpec, put_many, stat_many
from bootstrap.inventory import Host, Inventory
from bootstrap.pki.table import CA_BY_NAME, flags_for
from bootstrap.services import (
    Service,
    ServiceStatus,
    inputs_digest,
    manager_from,
    render_unit,
    unit_path,
)
from bootstrap.steps.etcd import etcd_servers, etcd_servers_overrides

APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
SERVICES = (APISERVER, CONTROLLER_MANAGER, SCHEDULER)
READY_TIMEOUT_S = 120
CA_CERT = CA_BY_NAME["kubernetes-ca"].cert_path
HEALTH_PORTS = {CONTROLLER_MANAGER: config.CONTROLLER_MANAGER_PORT,
                SCHEDULER: config.SCHEDULER_PORT}


def _control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.control_plane


def watched_paths(ctx: HostContext) -> list[str]:
    """Files whose state the facts step gathers for this step."""
    if not ctx.host.has("control-plane") or "encryption" not in ctx.shared:
        return []
    return [f.path for f in config.files(ctx.inventory, b"")] + [unit_path(s) for s in SERVICES]


def services(ctx: HostContext) -> list[Service]:
    """The three services of this host, in start order."""
    inventory, host = ctx.inventory, ctx.host
    binaries, ids = ctx.facts["k8s"], ctx.facts["k8s_id"]
    contents = {f.path: f.content for f in ctx.shared["pki"].hosts[host.name].files}
    contents.update({f.path: f.content
                     for f in config.files(inventory, ctx.shared["encryption"])})
    commands = {
        APISERVER: config.apiserver_command(inventory, host, binaries[APISERVER],
                                            etcd_servers(inventory),
                                            etcd_servers_overrides(inventory)),
        CONTROLLER_MANAGER: config.controller_manager_command(inventory,
                                                              binaries[CONTROLLER_MANAGER]),
        SCHEDULER: config.scheduler_command(binaries[SCHEDULER]),
    }
    after = {APISERVER: ("etcd",) if host.has("etcd") else (),
             CONTROLLER_MANAGER: (APISERVER,), SCHEDULER: (APISERVER,)}
    described = {APISERVER: "Kubernetes API server", CONTROLLER_MANAGER:
                 "Kubernetes controller manager", SCHEDULER: "Kubernetes scheduler"}
    return [Service(name=name, command_line=commands[name],
                    env={"MZK_INPUTS": inputs_digest(ids[name], commands[name], contents)},
                    after=after[name], description=described[name]) for name in SERVICES]


@dataclass
class HostPlan:
    """What one host needs: config files to write, services to (re)start and why."""

    ctx: HostContext
    files: list[FileSpec]
    services: list[Service]
    restart: dict[str, str] = field(default_factory=dict)  # name -> reason

    leftover_drain: bool = False  # a drain an interrupted run left behind

    @property
    def changed(self) -> bool:
        return bool(self.files or self.restart or self.leftover_drain)


def deferred_pki(ctx: HostContext) -> set[str]:
    """PKI files that the pki step leaves to this step on a host whose API server runs:
    those only the control-plane services read (etcd's stay with the pki step). The API
    server takes up new certificates on disk while it runs; written during the host's own
    turn (drained, then restarted), a new CA or leaf never reaches a serving API server
    mid-request, and hosts change one at a time."""
    if not ctx.host.has("control-plane") or not _api_running(ctx) or "k8s" not in ctx.facts:
        return set()
    named = {part for s in services(ctx) for word in s.command_line
             for part in re.split(r"[=,#;]", word)}
    etcd_owned = {path for command in ("etcd", "etcdctl")
                  for path in flags_for(command).values()}
    ours = {f.path for f in ctx.shared["pki"].hosts[ctx.name].files}
    return (named & ours) - etcd_owned


def plan_host(ctx: HostContext) -> HostPlan:
    wanted = services(ctx)
    files = [FileSpec(f.path, f.content, f.mode)
             for f in config.files(ctx.inventory, ctx.shared["encryption"])]
    deferred = deferred_pki(ctx)
    files += [FileSpec(f.path, f.content, f.mode)
              for f in ctx.shared["pki"].hosts[ctx.name].files if f.path in deferred]
    units = {s.name: render_unit(s).encode() for s in wanted}
    paths = [f.path for f in files] + [unit_path(s.name) for s in wanted]
    known = ctx.facts.get("file_states") or {}
    states = ({p: known[p] for p in paths} if all(p in known for p in paths)
              else stat_many(ctx.runner, paths))
    status: dict[str, ServiceStatus] = ctx.facts.get("services", {})
    plan = HostPlan(ctx, [f for f in files if states[f.path] != f.state()], wanted)
    for svc in wanted:
        unit = FileSpec(unit_path(svc.name), units[svc.name], 0o644)
        current = status.get(svc.name, ServiceStatus(False, None))
        if states[unit.path] is None:
            plan.restart[svc.name] = f"start {svc.name}"
        elif states[unit.path] != unit.state():
            plan.restart[svc.name] = f"restart {svc.name}: " + _why(ctx, svc, unit.path)
        elif not current.current(units[svc.name]):
            plan.restart[svc.name] = f"start {svc.name} (not running)"
    plan.leftover_drain = bool(ctx.facts.get("drained"))
    if APISERVER in plan.restart and _api_running(ctx):
        # Their watches hold a stopping API server for many seconds: stop them first.
        for name in (CONTROLLER_MANAGER, SCHEDULER):
            plan.restart.setdefault(name, f"restart {name} (stopped while its API server "
                                          "restarts)")
    return plan


def _why(ctx: HostContext, svc: Service, path: str) -> str:
    """The flags that differ between the unit on the host and ours, for plan and apply."""
    old = ctx.runner.read(path) or b""
    old_words = next((shlex.split(line[len("ExecStart="):])
                      for line in old.decode("utf-8", "replace").splitlines()
                      if line.startswith("ExecStart=")), [])
    changes = flag_changes(old_words, list(svc.command_line))
    if not changes:
        return "its inputs changed (binary, certificates or configuration)"
    shown = ", ".join(changes[:6]) + (f" and {len(changes) - 6} more" if len(changes) > 6 else "")
    return f"flags {shown}"


def flag_changes(old: list[str], new: list[str]) -> list[str]:
    """`--flag=a -> b` for a changed value, `+--flag=v` added, `-(--flag=v)` removed; the
    binary path as `binary a -> b`."""
    def split(words: list[str]) -> dict[str, str]:
        found = {"binary": words[0]} if words else {}
        for word in words[1:]:
            name, _, value = word.partition("=")
            found[name] = value
        return found

    before, after = split(old), split(new)
    changes = [f"{name}={before[name]} -> {after[name]}" if name.startswith("--")
               else f"{name} {before[name]} -> {after[name]}"
               for name in after if name in before and before[name] != after[name]]
    changes += [f"+{name}={after[name]}" for name in after if name not in before]
    changes += [f"-({name}={before[name]})" for name in before if name not in after]
    return changes


def wait_ready(ctx: HostContext, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll the API server's /readyz on the host itself, verifying its certificate."""
    url = config.readyz_url(ctx.inventory, ctx.host)
    _poll(ctx, f"curl -sf --max-time 2 --cacert {shlex.quote(CA_CERT)} {shlex.quote(url)}",
          timeout, f"{APISERVER} not ready")


def wait_healthy(ctx: HostContext, name: str, timeout: float = READY_TIMEOUT_S) -> None:
    """The controller-manager and scheduler serve /healthz on loopback only, with a
    certificate of their own making: the check is liveness, not identity."""
    url = f"https://127.0.0.1:{HEALTH_PORTS[name]}/healthz"
    _poll(ctx, f"curl -skf --max-time 2 {shlex.quote(url)}", timeout, f"{name} not healthy")


def _poll(ctx: HostContext, probe: str, timeout: float, what: str) -> None:
    tries = int(timeout / 0.2)
    out = ctx.runner.run(f"for i in $(seq 1 {tries}); do {probe} >/dev/null 2>&1 && exit 0; "
                         "sleep 0.2; done; exit 1", check=False, timeout=timeout + 30)
    if not out.ok:
        raise StepError(f"{ctx.name}: {what} after {timeout:.0f} s; see "
                        f"/var/lib/mzk/log/<service>.log or journalctl -u <service>")


DRAIN_TABLE = "mzk_drain"


def drain(ctx: HostContext) -> bool:
    """Take a running API server out of its load balancers before it stops: its port
    refuses new connections from other hosts (a TCP reset, so a balancer retries
    elsewhere at once) while existing ones finish, for `drain_seconds`, the time the
    balancers' health checks need to mark it down. Without this, a stopping API server
    answers /readyz with 500 to whoever the balancer still sends. Skipped (said in the
    report) on a host without nftables."""
    if not ctx.facts.get("bin", {}).get("nft"):
        ctx.note("kube-apiserver not drained: nft not found; install nftables")
        return False
    port = ctx.inventory.cluster.api_port
    t = DRAIN_TABLE
    ctx.runner.run(f"nft add table inet {t} && nft add chain inet {t} input "
                   f"'{{ type filter hook input priority -10; }}' && nft add rule inet {t} "
                   f"input iifname != lo tcp dport {port} ct state new reject with tcp reset "
                   f"&& sleep {ctx.inventory.drain_seconds:g}",
                   timeout=ctx.inventory.drain_seconds + 30)
    return True


def undrain(ctx: HostContext) -> None:
    ctx.runner.run(f"nft delete table inet {DRAIN_TABLE} 2>/dev/null; true")


def roll_host(plan: HostPlan) -> None:
    """Bring one host to its plan: files, then the API server (waiting for /readyz), then
    the controller-manager and scheduler (waiting for /healthz)."""
    ctx = plan.ctx
    for f in plan.files:
        ctx.note(f"write {f.path}")
    for name in SERVICES:
        if name in plan.restart:
            ctx.note(plan.restart[name])
    if plan.leftover_drain:
        ctx.note("remove the drain an interrupted run left on kube-apiserver's port")
    if ctx.dry_run:
        return
    manager = manager_from(ctx.name, bool(ctx.facts.get("lab")), bool(ctx.facts.get("systemd")))
    by_name = {s.name: s for s in plan.services}
    drained = plan.leftover_drain
    running = APISERVER in plan.restart and _api_running(ctx)
    if plan.files and not running:
        put_many(ctx.runner, plan.files)
    try:
        if APISERVER in plan.restart:
            if running:
                drained = drain(ctx) or drained
                _both(lambda name: manager.stop(ctx.runner, name))
                if plan.files:  # drained: what the API server reads changes now, then it
                    put_many(ctx.runner, plan.files)  # restarts
            ctx.runner.run("install -d -m 0700 "
                           f"{shlex.quote(config.AUDIT_LOG.rsplit('/', 1)[0])}")
            manager.ensure(ctx.runner, by_name[APISERVER])
        wait_ready(ctx)
    finally:
        if drained:  # also when it failed: a server that is not ready fails its checks
            undrain(ctx)
    def start(name: str) -> None:
        if name in plan.restart:
            manager.ensure(ctx.runner, by_name[name])
            wait_healthy(ctx, name)

    _both(start)


def _both(work: Callable[[str], object]) -> None:
    """The controller-manager and the scheduler side by side (sessions share the host's
    connection); the first error is raised after both finished."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(work, name) for name in (CONTROLLER_MANAGER, SCHEDULER)]
    for future in futures:
        future.result()


def converge(group: list[HostContext]) -> None:
    if not group:
        return
    limit = group[0].inventory.ssh.parallel
    plans = run_on_hosts(group, plan_host, limit, title="control-plane (plan)",
                         progress=_quiet)
    todo = [plans[c.name] for c in group if plans[c.name].changed]
    fresh = [p for p in todo if not _api_running(p.ctx)]
    running = [p for p in todo if p not in fresh]
    if fresh:  # nothing serves from these hosts yet: start them side by side
        run_on_hosts([p.ctx for p in fresh], lambda c: roll_host(plans[c.name]), limit,
                     title="control-plane", progress=_quiet)
    for plan in running:  # one at a time: the others keep serving
        roll_host(plan)


def retire(ctx: HostContext) -> None:
    """A host that lost the control-plane role: stop its services, remove their units and
    the configuration files (the encryption key among them)."""
    traces = ctx.facts.get("control_plane_traces")
    if traces is not None and not traces:
        return  # the facts saw no control-plane unit on this host
    manager = manager_from(ctx.name, bool(ctx.facts.get("lab")), bool(ctx.facts.get("systemd")))
    configs = [f.path for f in config.files(ctx.inventory, b"")]
    present = {p for p, state in stat_many(ctx.runner, [unit_path(s) for s in SERVICES]
                                           + configs).items() if state is not None}
    for name in reversed(SERVICES):
        if unit_path(name) in present:
            ctx.note(f"stop {name} and remove its unit (no longer a control-plane host)")
            if not ctx.dry_run:
                manager.stop(ctx.runner, name)
                ctx.runner.remove(unit_path(name))
    for path in configs:
        if path in present:
            ctx.note(f"remove {path}")
            if not ctx.dry_run:
                ctx.runner.remove(path)


def _not_control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return tuple(h for h in inventory.hosts if not h.has("control-plane"))


def _api_running(ctx: HostContext) -> bool:
    status: dict[str, ServiceStatus] = ctx.facts.get("services", {})
    return status.get(APISERVER, ServiceStatus(False, None)).running


def _quiet(_host: str, _title: str, _state: str) -> None:
    pass


CONTROL_PLANE = Step("control-plane", _control_plane, run_together=converge)
CONTROL_PLANE_RETIRE = Step("control-plane-retire", _not_control_plane, run=retire)
DRAIN_SCRIPT = (f"nft list table inet {DRAIN_TABLE} >/dev/null 2>&1 && echo 'drained 1' "
                "|| echo 'drained 0'")
TRACES_PATHS = [unit_path(s) for s in SERVICES]
