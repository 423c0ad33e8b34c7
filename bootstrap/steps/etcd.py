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

import dataclasses
import hashlib
import json
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from bootstrap import ports
from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.host_fanout import run_on_hosts
from bootstrap.inventory import Host, Inventory
from bootstrap.pki.table import LEAF_BY_NAME, flag_words, flags_for
from bootstrap.runner import Result
from bootstrap.services import (
    Service,
    ServiceManager,
    manager_from,
    pending_change,
    render_unit,
    unit_path,
)

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
            initial: dict[str, str], binary_id: str = "") -> Service:
    """`binary_id` names the etcd binary (version, checksum) in the unit: a new binary
    changes the unit, and a changed unit restarts the member (rolled, one at a time)."""
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
        *flag_words("etcd"),
        "--snapshot-count=10000",
        "--experimental-initial-corrupt-check=true",
    ]
    env = {**initial, "MZK_BINARY": binary_id} if binary_id else initial
    return Service(name=cluster.service, command_line=command, env=env,
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
    command = etcdctl_command(ctx.facts.get("etcdctl", "etcdctl"), cluster, args,
                              client=client, endpoints=endpoints)
    return ctx.runner.run(command, check=check, timeout=timeout)


def etcdctl_command(binary: str, cluster: EtcdCluster, args: str, *, client: str = "health",
                    endpoints: str | None = None) -> str:
    flags = flags_for("etcdctl")
    if client == "admin":
        leaf = LEAF_BY_NAME["kube-apiserver-etcd-client"]
        flags = {**flags, "--cert": leaf.cert_path, "--key": leaf.key_path}
    endpoint = endpoints or f"https://127.0.0.1:{cluster.client_port}"
    words = [binary, f"--endpoints={endpoint}",
             *(f"{k}={v}" for k, v in sorted(flags.items())), "--command-timeout=5s",
             "--dial-timeout=3s"]
    return "ETCDCTL_API=3 " + " ".join(shlex.quote(w) for w in words) + " " + args


def fact_scripts(members: bool = True) -> dict[str, str]:
    """For the facts round trip of etcd hosts, per cluster: the member's data and unit
    (what `probe` asks) and the member list (what `_anchor` asks), so that a converged
    cluster costs no round trip here."""
    scripts = {}
    for cluster in CLUSTERS:
        scripts[f"probe:{cluster.service}"] = _probe_script(cluster)
        if members:
            scripts[f"members:{cluster.service}"] = etcdctl_command(
                "etcdctl", cluster, "member list -w json", client="admin")
    return scripts


def read_facts(found: dict[str, str]) -> dict[str, object]:
    """The facts' view: {"probe:etcd": Probe, "members:etcd": [Member] or None, ...}."""
    facts: dict[str, object] = {}
    for cluster in CLUSTERS:
        if f"probe:{cluster.service}" in found:
            facts[f"probe:{cluster.service}"] = _parse_probe(found[f"probe:{cluster.service}"])
        if f"members:{cluster.service}" not in found:
            continue
        try:
            facts[f"members:{cluster.service}"] = parse_members(
                found[f"members:{cluster.service}"])
        except (ValueError, KeyError, TypeError):
            facts[f"members:{cluster.service}"] = None
    return facts


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


@dataclass(frozen=True)
class Probe:
    has_data: bool
    unit: bytes | None


def probe(ctx: HostContext, cluster: EtcdCluster) -> Probe:
    """One round trip: does the member have data, and the unit it runs with."""
    return _parse_probe(ctx.runner.run(_probe_script(cluster)).stdout)


def _probe_script(cluster: EtcdCluster) -> str:
    data = shlex.quote(f"{cluster.data_dir}/member")
    unit = shlex.quote(unit_path(cluster.service))
    return f"[ -d {data} ] && echo data || echo none; [ -f {unit} ] && cat {unit} || true"


def _parse_probe(out: str) -> Probe:
    first, _, rest = out.partition("\n")
    return Probe(has_data=first.strip() == "data", unit=rest.encode() if rest else None)


def _manager(ctx: HostContext) -> ServiceManager:
    """From the facts, which already record the lab marker and systemd."""
    return manager_from(ctx.name, bool(ctx.facts.get("lab")), bool(ctx.facts.get("systemd")))


def _ensure(ctx: HostContext, svc: Service, cluster: EtcdCluster,
            data_dir_exists: bool = False) -> bool:
    """Make the service run as defined: one decision (`pending_change`) for apply and
    plan, so the plan's line is the apply's."""
    change = pending_change(ctx.runner, svc)
    if change is None:
        return False
    ctx.note(change)
    if ctx.dry_run:
        return True
    if not data_dir_exists:
        ctx.runner.run(f"install -d -m 0700 {shlex.quote(cluster.data_dir)}")
    _manager(ctx).ensure(ctx.runner, svc)
    return True


def _inputs(ctx: HostContext) -> dict[str, str]:
    """`MZK_INPUTS`: a digest of the certificates the member reads. etcd reads its trusted
    CA at start, so a new CA bundle (a rotation) must restart it, rolled like any change."""
    pki = ctx.shared.get("pki")
    if pki is None or ctx.name not in pki.hosts:
        return {}
    named = set(flags_for("etcd").values())
    digest = hashlib.sha256()
    for f in sorted(pki.hosts[ctx.name].files, key=lambda f: f.path):
        if f.path in named:
            digest.update(f"{f.path} {hashlib.sha256(f.content).hexdigest()}\n".encode())
    return {"MZK_INPUTS": digest.hexdigest()}


def _hand_over_leadership(ctx: HostContext, cluster: EtcdCluster,
                          avoid: set[str] | None = None) -> None:
    """If this member leads, move the leadership to another member before it restarts:
    writes then wait for no election (etcd's own transfer on shutdown can come too late
    for a client's deadline)."""
    out = etcdctl(ctx, cluster, "endpoint status -w json", check=False)
    try:
        status = json.loads(out.stdout)[0]["Status"]
        me = status["header"]["member_id"]
        leads = status["leader"] == me
    except (ValueError, KeyError, IndexError, TypeError):
        return  # not answering: nothing to hand over
    if not leads:
        return
    others = [m for m in members(ctx, cluster) if int(m.id_hex, 16) != me and m.name]
    others.sort(key=lambda m: m.name in (avoid or set()))  # restarted or staying first
    if others:
        etcdctl(ctx, cluster, f"move-leader {others[0].id_hex}", client="admin", check=False)


def member_running(ctx: HostContext, cluster: EtcdCluster) -> bool:
    """From the facts' service states (gathered with the facts on etcd hosts)."""
    found = ctx.facts.get("services", {}).get(cluster.service)
    return found is not None and found.running


def _current(ctx: HostContext, svc: Service, found: Probe) -> bool:
    """The member runs with exactly this unit (no round trip: facts and probe)."""
    unit = render_unit(svc).encode()
    state = ctx.facts.get("services", {}).get(svc.name)
    return found.unit == unit and state is not None and state.current(unit)


def _set_aside(ctx: HostContext, cluster: EtcdCluster, why: str) -> None:
    """Stop the member and move its data away (kept, never deleted) so it can join anew."""
    ctx.note(f"stop {cluster.service} and move {cluster.data_dir} aside ({why})")
    if ctx.dry_run:
        return
    _manager(ctx).stop(ctx.runner, cluster.service)
    d = shlex.quote(cluster.data_dir)
    ctx.runner.run(f"[ -d {d} ] && mv {d} {d}.removed-$(date -u +%Y%m%dT%H%M%S) || true")


def _listed_by_facts(group: list[HostContext], cluster: EtcdCluster
                     ) -> tuple[HostContext, list[Member]] | None:
    """A member list the facts already hold (taken at the start of this run), if any, and
    the caller uses it only while no member was (re)started in this run."""
    for ctx in group:
        listed = ctx.facts.get("etcd_facts", {}).get(f"members:{cluster.service}")
        if listed:
            return ctx, listed
    return None


def _anchor(group: list[HostContext], cluster: EtcdCluster) -> tuple[HostContext, list[Member]]:
    """A member that answers, and the member list it gives; waits for quorum if needed
    (a member list is a linearized read: it needs a quorum, so it doubles as health)."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while True:
        for ctx in group:
            out = etcdctl(ctx, cluster, "member list -w json", client="admin", check=False)
            if out.ok:
                return ctx, parse_members(out.stdout)
        if time.monotonic() > deadline:
            names = ", ".join(c.name for c in group)
            raise StepError(f"{cluster.service}: no member answers among {names} after "
                            f"{HEALTH_TIMEOUT_S:.0f} s; is a quorum of members up?")
        time.sleep(0.3)


def converge(cluster: EtcdCluster, group: list[HostContext]) -> None:
    """Converge one etcd cluster; `group` holds the members we can reach this run, while
    the inventory's etcd hosts are the members it should have (an unreachable member is
    never removed)."""
    if not group:
        return
    inventory = group[0].inventory
    dry_run = group[0].dry_run
    desired = list(inventory.etcd_members)
    desired_names = {h.name for h in desired}
    limit = inventory.ssh.parallel
    def known_or_probe(ctx: HostContext) -> Probe:
        known = ctx.facts.get("etcd_facts", {})
        found = known.get(f"probe:{cluster.service}")
        return found if isinstance(found, Probe) else probe(ctx, cluster)

    probes = run_on_hosts(group, known_or_probe, limit,
                          title=f"{cluster.service} (probe)", progress=_quiet)

    def definition(ctx: HostContext, members_now: list[Host], state: str) -> Service:
        env = initial_env(cluster, inventory, members_now, state)
        if probes[ctx.name].has_data:
            kept = recorded_env(probes[ctx.name].unit)
            if set(kept) == set(env):
                env = kept
        return service(cluster, inventory, ctx.host, ctx.facts.get("etcd", "etcd"),
                       {**env, **_inputs(ctx)}, ctx.facts.get("etcd_id", ""))

    with_data = [ctx for ctx in group if probes[ctx.name].has_data]
    if not with_data:
        # A new cluster: every member starts together and waits for its peers.
        run_on_hosts(group, lambda c: _ensure(c, definition(c, desired, "new"), cluster),
                     limit, title=cluster.service, progress=_quiet)
        if not dry_run:
            run_on_hosts(group, lambda c: wait_healthy(c, cluster), limit,
                         title=f"{cluster.service} (health)", progress=_quiet)
        return

    # Members that do not run start together (a cluster that is down needs a quorum back
    # at once); running members that need a change restart one at a time, each healthy
    # again before the next, so the cluster never loses its quorum.
    wanted = {c.name: definition(c, desired, "existing") for c in with_data}
    stopped = [c for c in with_data if not member_running(c, cluster)]
    rolling = [c for c in with_data if c not in stopped
               and not _current(c, wanted[c.name], probes[c.name])]
    run_on_hosts(stopped, lambda c: _ensure(c, wanted[c.name], cluster, data_dir_exists=True),
                 limit, title=cluster.service, progress=_quiet)
    for i, ctx in enumerate(rolling):
        if not dry_run:  # to a member that will not restart after this one
            _hand_over_leadership(ctx, cluster, avoid={c.name for c in rolling[i + 1:]})
        _ensure(ctx, wanted[ctx.name], cluster, data_dir_exists=True)
        if not dry_run:
            wait_healthy(ctx, cluster)
    if dry_run and not any(healthy(c, cluster) for c in with_data):
        for ctx in group:
            if ctx not in with_data:
                ctx.note(f"join {cluster.service} as a new member (state existing)")
        return
    # The facts' member list serves only while no member was (re)started in this run; a
    # started member needs the quorum back first, which `_anchor` waits for.
    anchor, listed = (None if stopped or rolling else _listed_by_facts(with_data, cluster)) \
        or _anchor(with_data, cluster)

    def listed_as(host: Host) -> list[Member]:
        peer = cluster.peer_url(host)
        return [m for m in listed if m.name == host.name or peer in m.peer_urls]

    newcomers = [ctx for ctx in group if not probes[ctx.name].has_data]
    for ctx in with_data:
        if not listed_as(ctx.host):  # data of a member the cluster no longer has
            _set_aside(ctx, cluster, "it is no longer a member")
            newcomers.append(ctx)
    for ctx in with_data:  # a host replaced under its name (its volume kept): new address
        peer = cluster.peer_url(ctx.host)
        for m in listed:
            if m.name == ctx.name and peer not in m.peer_urls:
                anchor.note(f"update member {m.name} ({m.id_hex}) of {cluster.service}: peer "
                            f"URL {peer} (was {', '.join(m.peer_urls)})")
                if not dry_run:
                    etcdctl(anchor, cluster, f"member update {m.id_hex} "
                                             f"--peer-urls={shlex.quote(peer)}", client="admin")
                    wait_healthy(ctx, cluster)
    for m in listed:  # removals first: the quorum must not count departed hosts
        known = m.name in desired_names or any(
            cluster.peer_url(h) in m.peer_urls for h in desired)
        if not known:
            anchor.note(f"remove member {m.name or m.peer_urls} ({m.id_hex}) from "
                        f"{cluster.service}")
            if not dry_run:
                etcdctl(anchor, cluster, f"member remove {m.id_hex}", client="admin")
    for ctx in newcomers:  # one at a time: each join changes the quorum
        ctx.note(f"join {cluster.service} as a new member (state existing)")
        if dry_run:  # what `_ensure` would say after the member add, as the apply says it
            _ensure(ctx, definition(ctx, desired, "existing"), cluster)
            continue
        stale = [m for m in listed_as(ctx.host) if m.name]  # listed, but its data is gone
        for m in stale:
            etcdctl(anchor, cluster, f"member remove {m.id_hex}", client="admin")
        if stale or not listed_as(ctx.host):
            etcdctl(anchor, cluster, f"member add {shlex.quote(ctx.name)} "
                                     f"--peer-urls={shlex.quote(cluster.peer_url(ctx.host))}",
                    client="admin")
        listed = members(anchor, cluster)
        current = [h for h in desired if listed_as(h)]
        _ensure(ctx, definition(ctx, current, "existing"), cluster)
        wait_healthy(ctx, cluster)
        listed = members(anchor, cluster)


def retire(ctx: HostContext) -> None:
    """A host that lost the etcd role: after the clusters removed its members, stop its
    etcd services and move their data aside."""
    if "etcd_traces" in ctx.facts and not ctx.facts["etcd_traces"]:
        return  # the facts saw no etcd unit and no etcd data on this host
    for cluster in CLUSTERS:
        found = probe(ctx, cluster)
        if found.unit is None and not found.has_data:
            continue
        _set_aside(ctx, cluster, "the host is no longer an etcd member")
        if not ctx.dry_run:
            ctx.runner.remove(unit_path(cluster.service))


def _quiet(_host: str, _title: str, _state: str) -> None:
    pass


def _etcd_hosts(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.etcd_members


def _not_etcd_hosts(inventory: Inventory) -> tuple[Host, ...]:
    return tuple(h for h in inventory.hosts if not h.has("etcd"))


def converge_both(group: list[HostContext]) -> None:
    """Main and events are independent clusters: converge them side by side (two threads
    share each host's SSH connection). Each notes its changes apart, and they are reported
    main first, so the output does not depend on which finished first."""
    views = {c.service: [dataclasses.replace(ctx, changes=[]) for ctx in group]
             for c in CLUSTERS}
    with ThreadPoolExecutor(max_workers=len(CLUSTERS)) as pool:
        futures = [pool.submit(converge, c, views[c.service]) for c in CLUSTERS]
        wait(futures)
    for cluster in CLUSTERS:
        for ctx, view in zip(group, views[cluster.service], strict=True):
            ctx.changes.extend(view.changes)
    for future in futures:
        future.result()  # the first failure, after every change was noted


ETCD = Step("etcd", _etcd_hosts, run_together=converge_both)
ETCD_RETIRE = Step("etcd-retire", _not_etcd_hosts, run=retire)


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
