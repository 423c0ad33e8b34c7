"""etcd: a main cluster and a separate events cluster (the large-cluster document's advice),
one member per control-plane host, TLS on client and peer ports with the certificates and
flags of the PKI document (`flags_for("etcd")`), client and peer certificate auth on.

Membership is decided for the whole cluster at once:
- no member has data yet: every member starts together as a `new` cluster;
- otherwise the members with data are (re)started first, then members that are no longer
  in the inventory are removed, then each new member is added (`member add`) and started
  with state `existing`, one at a time, waiting for it to be healthy.

The `ETCD_INITIAL_*` settings only matter on a member's first start. To keep the unit
stable (so a re-run restarts nothing), a member that already has data keeps the values its
unit was written with.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass

from bootstrap import ports
from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.hostfiles import FileSpec, differing
from bootstrap.inventory import Host, Inventory
from bootstrap.pki.table import LEAF_BY_NAME, flags_for
from bootstrap.services import Service, ServiceManager, manager_for, render_unit, unit_path
from bootstrap.ssh import Result, run_on_hosts

HEALTH_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EtcdCluster:
    service: str
    client_port: int
    peer_port: int
    data_dir: str
    description: str

    def client_url(self, host: Host) -> str:
        return f"https://{_bracket(host.address)}:{self.client_port}"

    def peer_url(self, host: Host) -> str:
        return f"https://{_bracket(host.address)}:{self.peer_port}"


MAIN = EtcdCluster("etcd", ports.ETCD_CLIENT, ports.ETCD_PEER, "/var/lib/etcd/main",
                   "etcd: the cluster's main store")
EVENTS = EtcdCluster("etcd-events", ports.ETCD_EVENTS_CLIENT, ports.ETCD_EVENTS_PEER,
                     "/var/lib/etcd/events", "etcd: events only (--etcd-servers-overrides)")
CLUSTERS = (MAIN, EVENTS)


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def etcd_servers(inventory: Inventory, cluster: EtcdCluster = MAIN) -> str:
    """The API server's --etcd-servers value (or the events override's URL list)."""
    return ",".join(cluster.client_url(h) for h in inventory.etcd_members)


def etcd_servers_overrides(inventory: Inventory) -> str:
    """--etcd-servers-overrides: events go to their own cluster (seed 004, part 1)."""
    return "/events#" + ";".join(EVENTS.client_url(h) for h in inventory.etcd_members)


# --------------------------------------------------------------------------- definitions


def initial_cluster(cluster: EtcdCluster, hosts: list[Host]) -> str:
    return ",".join(f"{h.name}={cluster.peer_url(h)}" for h in hosts)


def service(cluster: EtcdCluster, inventory: Inventory, host: Host, etcd_bin: str,
            initial: dict[str, str]) -> Service:
    local = f"https://127.0.0.1:{cluster.client_port}"
    command = [
        etcd_bin,
        f"--name={host.name}",
        f"--data-dir={cluster.data_dir}",
        f"--listen-client-urls={cluster.client_url(host)},{local}",
        f"--advertise-client-urls={cluster.client_url(host)}",
        f"--listen-peer-urls={cluster.peer_url(host)}",
        f"--initial-advertise-peer-urls={cluster.peer_url(host)}",
        "--client-cert-auth=true",
        "--peer-client-cert-auth=true",
        *(f"{flag}={path}" for flag, path in sorted(flags_for("etcd").items())),
        "--snapshot-count=10000",
        "--experimental-initial-corrupt-check=true",
    ]
    return Service(name=cluster.service, command_line=command, env=initial,
                   description=cluster.description)


def initial_env(cluster: EtcdCluster, inventory: Inventory, members: list[Host],
                state: str) -> dict[str, str]:
    return {
        "ETCD_INITIAL_CLUSTER": initial_cluster(cluster, members),
        "ETCD_INITIAL_CLUSTER_STATE": state,
        "ETCD_INITIAL_CLUSTER_TOKEN": f"{inventory.cluster.name}-{cluster.service}",
    }


_ENV_LINE = re.compile(r'^Environment="?(ETCD_INITIAL_[A-Z_]+)=(.*?)"?$')


def recorded_env(unit: bytes | None) -> dict[str, str]:
    """The ETCD_INITIAL_* values a unit was written with (empty if none)."""
    if unit is None:
        return {}
    found = {}
    for line in unit.decode("utf-8", "replace").splitlines():
        match = _ENV_LINE.match(line.strip())
        if match:
            found[match[1]] = match[2]
    return found


# --------------------------------------------------------------------------- etcdctl


def etcdctl(ctx: HostContext, cluster: EtcdCluster, args: str, *, client: str = "health",
            endpoints: str | None = None, check: bool = True, timeout: float = 20.0) -> Result:
    """Run etcdctl on the host with the document's etcdctl flags. `client="health"` uses
    the healthcheck client certificate; `"admin"` the API server's etcd client (member
    changes are writes, so they use the writer's identity)."""
    flags = flags_for("etcdctl")
    if client == "admin":
        leaf = LEAF_BY_NAME["kube-apiserver-etcd-client"]
        flags = {**flags, "--cert": leaf.cert_path, "--key": leaf.key_path}
    endpoint = endpoints or f"https://127.0.0.1:{cluster.client_port}"
    words = [ctx.facts.get("etcdctl", "etcdctl"), f"--endpoints={endpoint}",
             *(f"{k}={v}" for k, v in sorted(flags.items())), "--command-timeout=5s",
             "--dial-timeout=3s"]
    command = "ETCDCTL_API=3 " + " ".join(shlex.quote(w) for w in words) + " " + args
    return ctx.runner.run(command, check=check, timeout=timeout)


def healthy(ctx: HostContext, cluster: EtcdCluster) -> bool:
    return etcdctl(ctx, cluster, "endpoint health", check=False).ok


def wait_healthy(ctx: HostContext, cluster: EtcdCluster,
                 timeout: float = HEALTH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(ctx, cluster):
        if time.monotonic() > deadline:
            raise StepError(f"{ctx.name}: {cluster.service} not healthy after {timeout:.0f} s;"
                            f" see /var/lib/mzk/log/{cluster.service}.log or journalctl -u "
                            f"{cluster.service}")
        time.sleep(0.2)


@dataclass(frozen=True)
class Member:
    id_hex: str
    name: str
    peer_urls: tuple[str, ...]


def members(ctx: HostContext, cluster: EtcdCluster) -> list[Member]:
    return parse_members(etcdctl(ctx, cluster, "member list -w json", client="admin").stdout)


def parse_members(text: str) -> list[Member]:
    data = json.loads(text)
    return [Member(id_hex=f"{int(m['ID']):x}", name=m.get("name", ""),
                   peer_urls=tuple(m.get("peerURLs", []))) for m in data.get("members", [])]


# --------------------------------------------------------------------------- the step


def _has_data(ctx: HostContext, cluster: EtcdCluster) -> bool:
    q = shlex.quote(f"{cluster.data_dir}/member")
    return ctx.runner.run(f"[ -d {q} ] && echo yes || echo no").stdout.strip() == "yes"


def _manager(ctx: HostContext) -> ServiceManager:
    manager = ctx.facts.get("service_manager")
    if manager is None:
        manager = ctx.facts["service_manager"] = manager_for(ctx.runner)
    return manager  # type: ignore[no-any-return]


def _ensure(ctx: HostContext, svc: Service, cluster: EtcdCluster) -> bool:
    """Make the service run as defined; in a dry run, say what would change."""
    if ctx.dry_run:
        unit = FileSpec(unit_path(svc.name), render_unit(svc).encode(), 0o644)
        if differing(ctx.runner, [unit]):
            ctx.note(f"write {unit.path} and (re)start {svc.name}")
            return True
        if not _manager(ctx).is_active(ctx.runner, svc.name):
            ctx.note(f"start {svc.name}")
            return True
        return False
    ctx.runner.run(f"install -d -m 0700 {shlex.quote(cluster.data_dir)}")
    changed = _manager(ctx).ensure(ctx.runner, svc)
    if changed:
        ctx.note(f"{svc.name} started with {unit_path(svc.name)}")
    return changed


def converge(cluster: EtcdCluster, group: list[HostContext]) -> None:
    inventory = group[0].inventory
    desired = [ctx.host for ctx in group]
    by_name = {ctx.name: ctx for ctx in group}
    limit = inventory.ssh.parallel
    has_data = run_on_hosts(group, lambda c: _has_data(c, cluster), limit,
                            title=f"{cluster.service} (data)", progress=_quiet)
    with_data = [ctx for ctx in group if has_data[ctx.name]]

    def definition(ctx: HostContext, members_now: list[Host], state: str) -> Service:
        env = initial_env(cluster, inventory, members_now, state)
        if has_data[ctx.name]:
            kept = recorded_env(ctx.runner.read(unit_path(cluster.service)))
            if set(kept) == set(env):
                env = kept
        return service(cluster, inventory, ctx.host, ctx.facts.get("etcd", "etcd"), env)

    if not with_data:
        # A new cluster: every member starts together and waits for its peers.
        run_on_hosts(group, lambda c: _ensure(c, definition(c, desired, "new"), cluster),
                     limit, title=cluster.service, progress=_quiet)
        if not group[0].dry_run:
            run_on_hosts(group, lambda c: wait_healthy(c, cluster), limit,
                         title=f"{cluster.service} (health)", progress=_quiet)
        return

    run_on_hosts(with_data, lambda c: _ensure(c, definition(c, desired, "existing"), cluster),
                 limit, title=cluster.service, progress=_quiet)
    newcomers = [ctx for ctx in group if not has_data[ctx.name]]
    anchor = with_data[0]
    if group[0].dry_run:
        listed = members(anchor, cluster) if healthy(anchor, cluster) else []
        for m in listed:
            if m.name and m.name not in by_name:
                anchor.note(f"remove member {m.name} ({m.id_hex}) from {cluster.service}")
        for ctx in newcomers:
            ctx.note(f"join {cluster.service} as a new member (state existing)")
        return
    wait_healthy(anchor, cluster)
    listed = members(anchor, cluster)
    for m in listed:  # removals first: the quorum must not count departed hosts
        stale = m.name and m.name not in by_name
        unstarted_stale = not m.name and not any(
            set(m.peer_urls) == {cluster.peer_url(h)} for h in desired)
        if stale or unstarted_stale:
            etcdctl(anchor, cluster, f"member remove {m.id_hex}", client="admin")
            anchor.note(f"removed member {m.name or m.peer_urls} from {cluster.service}")
    for ctx in newcomers:  # one at a time: each join changes the quorum
        listed = members(anchor, cluster)
        peer = cluster.peer_url(ctx.host)
        known = [m for m in listed if peer in m.peer_urls or m.name == ctx.name]
        for m in known:
            if m.name:  # a member by that name exists but this host has no data: re-add
                etcdctl(anchor, cluster, f"member remove {m.id_hex}", client="admin")
        if not known or any(m.name for m in known):
            etcdctl(anchor, cluster, f"member add {shlex.quote(ctx.name)} "
                                     f"--peer-urls={shlex.quote(peer)}", client="admin")
        current = [h for h in desired if has_data[h.name] or h.name == ctx.name]
        _ensure(ctx, definition(ctx, current, "existing"), cluster)
        wait_healthy(ctx, cluster)
        has_data[ctx.name] = True
        ctx.note(f"joined {cluster.service}")


def _quiet(_host: str, _title: str, _state: str) -> None:
    pass


def _etcd_hosts(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.etcd_members


ETCD_MAIN = Step("etcd", _etcd_hosts, run_together=lambda g: converge(MAIN, g))
ETCD_EVENTS = Step("etcd-events", _etcd_hosts, run_together=lambda g: converge(EVENTS, g))


def status(ctx: HostContext, cluster: EtcdCluster) -> str:
    """One phrase for `check`: health, member count and whether this member leads."""
    out = etcdctl(ctx, cluster, "endpoint status -w json", check=False)
    if not out.ok:
        return f"{cluster.service} DOWN"
    try:
        st = json.loads(out.stdout)[0]["Status"]
        leader = st["leader"] == st["header"]["member_id"]
        listed = etcdctl(ctx, cluster, "member list -w json", check=False).stdout
        count = len(parse_members(listed))
    except (ValueError, KeyError, IndexError):
        return f"{cluster.service} unreadable status"
    return (f"{cluster.service} healthy v{st.get('version', '?')}, {count} members"
            f"{', leader' if leader else ''}")
