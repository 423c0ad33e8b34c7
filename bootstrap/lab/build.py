"""Bring the lab up and down on this machine: namespaces, veths, bridges, one sshd per host.

Everything made is first written to DIR/lab-state.json, then made, so `down` can undo a
lab that crashed half-way; `down` also scans `ip netns list` for the lab's prefix. Each host's
sshd runs in its own network namespace and in a private mount namespace where the
directories the bootstrap writes (layout.HOST_DIRS) are bind-mounted from DIR/hosts/<name>/fs,
so processes started over SSH see only their host's files. Needs root.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from bootstrap import k8s_bin
from bootstrap.errors import ConfigError
from bootstrap.inventory import load as load_inventory
from bootstrap.k8s_releases import supported_versions
from bootstrap.lab import balancers, cgroups, hosts, imds, volumes
from bootstrap.lab.hosts import LabError, ensure_keypair, kill_namespace, pid_alive, write_private
from bootstrap.lab.layout import (
    HOST_DIRS,
    LAB_NET,
    LINK_BASE,
    LINK_SLOTS,
    Layout,
    inventory_data,
    plan,
)
from bootstrap.pki import generate

STATE_FILE = "lab-state.json"
GUARD_METRIC = 4000
SHARED_MOUNTPOINTS = "/run/mzk-lab-mountpoints"  # made by any lab, removed by the last
Say = Callable[[str], None]


def _ip(args: list[str], batch: list[str] | None = None, check: bool = True,
        force: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-force"] if force else []), *args]
    if batch is not None:
        cmd += ["-batch", "-"]
    proc = subprocess.run(cmd, input="\n".join(batch or []) + "\n" if batch else None,
                          capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def lab_namespaces(prefix: str) -> list[str]:
    """Every existing network namespace of this lab (found by its name prefix)."""
    proc = _ip(["netns", "list"], check=False)
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


@dataclass
class State:
    """What this lab made, saved before each piece is made."""

    path: Path
    data: dict

    @classmethod
    def load(cls, lab_dir: Path) -> State:
        path = lab_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("namespaces", [])
        data.setdefault("pids", {})
        data.setdefault("mountpoints", [])
        return cls(path, data)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(self.data, indent=2).encode(), 0o644)

    def add(self, key: str, *values: str) -> None:
        for value in values:
            if value not in self.data[key]:
                self.data[key].append(value)
        self.save()


# --------------------------------------------------------------------------- up


def _pick_link_slot(preferred: int) -> int:
    """A /30 for the root<->bastion link that overlaps nothing routed on this machine."""
    used = []
    for args in (["-4", "-o", "addr", "show"], ["-4", "route", "show", "table", "all"]):
        for word in _ip(args, check=False).stdout.split():
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
    for k in range(LINK_SLOTS):
        slot = (preferred + k) % LINK_SLOTS
        net = ipaddress.ip_network(f"{LINK_BASE + 4 * slot}/30")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0 and u != LAB_NET):
            return slot
    raise LabError("no free /30 for the bastion link in 10.213.250.0/24; remove other labs")


def _guard_route(slot: int) -> str:
    """The root namespace's only route for the lab range: unreachable (so nothing addressed
    to a lab host ever leaves by the default route); one per lab, told apart by metric.
    The bastion's /30 on the veth is more specific and stays reachable."""
    return f"unreachable {LAB_NET} metric {GUARD_METRIC + slot}"


def _remove_guard_routes(keep_slots: set[int]) -> None:
    """Delete guard routes of labs whose bastion link is gone (ours, or crashed ones)."""
    routes = _ip(["route", "show", "type", "unreachable", str(LAB_NET)], check=False).stdout
    for metric in (int(m) for m in re.findall(r"metric (\d+)", routes)):
        slot = metric - GUARD_METRIC
        if 0 <= slot < LINK_SLOTS and slot not in keep_slots:
            _ip(["route", "del", *_guard_route(slot).split()], check=False)


def _live_slots() -> set[int]:
    """Slots whose root end of the bastion link exists (labs that are up)."""
    out = _ip(["-4", "-o", "addr", "show"], check=False).stdout
    slots = set()
    for slot in range(LINK_SLOTS):
        if f" {LINK_BASE + 4 * slot + 1}/30 " in out:
            slots.add(slot)
    return slots


def _network(layout: Layout, state: State) -> None:
    """Namespaces, bridges, veths, addresses and routes."""
    state.add("namespaces", *layout.namespaces)
    existing = set(lab_namespaces(layout.prefix))
    missing = [n for n in layout.namespaces if n not in existing]
    if missing:
        _ip([], [f"netns add {n}" for n in missing])
    r = ["link set lo up"]
    bridges: set[str] = set()
    for host in layout.hosts:
        if host.bridge not in bridges:
            bridges.add(host.bridge)
            net = layout.zone_net(host.zone)
            r += [f"link add {host.bridge} type bridge", f"link set {host.bridge} up",
                  f"addr add {net[1]}/{net.prefixlen} dev {host.bridge}",
                  f"addr add {layout.zone_endpoint(host.zone)}/{net.prefixlen} "
                  f"dev {host.bridge}"]
        r += [f"link add {host.router_if} type veth peer name eth0 netns {host.netns}",
              f"link set {host.router_if} master {host.bridge}", f"link set {host.router_if} up"]
    r += [f"link add to-bastion type veth peer name eth1 netns {layout.bastion_ns}",
          f"addr add {layout.router_inner}/24 dev to-bastion",
          f"addr add {layout.regional_endpoint}/24 dev to-bastion", "link set to-bastion up"]
    _ip(["-n", layout.router_ns], r)
    subprocess.run(["ip", "netns", "exec", layout.router_ns, "sysctl", "-qw",
                    "net.ipv4.ip_forward=1"], check=True)
    state.data["root_if"] = layout.root_if
    state.data["root_route"] = _guard_route(layout.link_slot)
    state.save()
    # Guard: without it the machine's default route would carry lab addresses outside.
    _ip(["route", "add", *_guard_route(layout.link_slot).split()])
    _ip(["link", "add", layout.root_if, "type", "veth", "peer", "name", "eth0", "netns",
         layout.bastion_ns])
    _ip([], [f"addr add {layout.root_address}/30 dev {layout.root_if}",
             f"link set {layout.root_if} up"])
    batches = {layout.bastion_ns: [
        "link set lo up", f"addr add {layout.bastion_address}/30 dev eth0", "link set eth0 up",
        f"addr add {layout.bastion_inner}/24 dev eth1", "link set eth1 up",
        f"route add {LAB_NET} via {layout.router_inner}"]}
    for host in layout.hosts:
        batches[host.netns] = ["link set lo up", f"addr add {host.address}/24 dev eth0",
                               "link set eth0 up", f"route add {LAB_NET} via {host.gateway}"]
    procs = [(ns, subprocess.Popen(["ip", "-n", ns, "-batch", "-"], stdin=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True))
             for ns in batches]
    errors = []
    for ns, proc in procs:
        _, err = proc.communicate("\n".join(batches[ns]) + "\n")
        if proc.returncode != 0:
            errors.append(f"{ns}: {err.strip()}")
    if errors:
        raise LabError("configuring lab namespaces failed: " + "; ".join(errors))


def _mountpoints(state: State) -> None:
    """The bind targets must exist on the machine; create missing ones (empty), noted in
    the state and in a machine-wide list, so that the last lab down removes them."""
    for target in (*HOST_DIRS, "/run/sshd"):
        if not os.path.isdir(target):
            state.add("mountpoints", target)
            with open(SHARED_MOUNTPOINTS, "a") as f:
                f.write(target + "\n")
            os.makedirs(target, mode=0o755, exist_ok=True)


def _remove_mountpoints(state: State) -> None:
    """Remove the empty mount point directories labs created, once no lab is left."""
    if any(n.startswith("mzk-") for n in _ip(["netns", "list"], check=False).stdout.split()):
        return
    try:
        shared = Path(SHARED_MOUNTPOINTS).read_text().split()
    except OSError:
        shared = []
    for target in reversed(dict.fromkeys([*shared, *state.data.get("mountpoints", [])])):
        try:
            os.rmdir(target)
        except OSError:
            pass
    Path(SHARED_MOUNTPOINTS).unlink(missing_ok=True)


def up(lab_dir: Path, workers: int = 3, say: Say = print) -> Layout:
    """Build the lab (or keep it, if it is already up with this shape); write the inventory.

    Returns the layout. A lab that is up with another worker count gets workers added or
    removed in place (`resize`); a lab that is partly up is torn down and rebuilt. Keys in
    DIR are kept, so the inventory's pinned keys stay the same.
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, bind mounts); run as root")
    lab_dir = lab_dir.resolve()
    shadowed = next((d for d in HOST_DIRS if lab_dir == Path(d) or Path(d) in lab_dir.parents),
                    None)
    if shadowed is not None:
        raise ConfigError(f"--dir {lab_dir}: every lab host gets its own {shadowed}, which "
                          "would hide the lab's own files from its sshds; use a directory "
                          "elsewhere, e.g. /srv/multizone-k8s/lab")
    lab_dir.mkdir(parents=True, exist_ok=True)
    state = State.load(lab_dir)
    slot = state.data.get("link_slot")
    layout = plan(lab_dir, workers, link_slot=slot)
    running = plan(lab_dir, state.data.get("workers", workers), link_slot=slot)
    # Nodes launched into the lab's pools (bootstrap.lab.launch) are no part of its shape.
    launched = {f"{layout.prefix}-{name}" for name in state.data.get("launched", [])}
    if state.data.get("complete") and state.data.get("workers") != workers \
            and set(lab_namespaces(layout.prefix)) - launched == set(running.namespaces):
        # Another worker count on a lab that is up: add or remove workers in place, so
        # the control plane (etcd, API servers) keeps running.
        from bootstrap.lab.resize import resize
        layout = resize(running, workers, say)
    if state.data.get("complete") and State.load(lab_dir).data.get("workers") == workers \
            and set(lab_namespaces(layout.prefix)) - launched == set(layout.namespaces):
        # Same shape, network intact: only restart sshds that died (services keep running).
        for host in status(lab_dir):
            if not host.sshd_up:
                say(f"lab {layout.prefix}: restarting sshd on {host.name}")
                restart_sshd(lab_dir, host.name)
        state = State.load(lab_dir)
        state.data["etcd_volumes"] = volumes.ensure(layout, say)
        state.save()
        _write_inventory(layout)
        _balancers(layout)
        say(f"lab {layout.prefix} is up ({len(layout.hosts)} hosts)")
        return layout
    if lab_namespaces(layout.prefix) or state.data.get("namespaces"):
        say(f"lab {layout.prefix}: rebuilding a partial or different lab")
        down(lab_dir, remove_files=False, say=lambda _m: None)
        state = State.load(lab_dir)
        slot = None
    if slot is None:
        slot = _pick_link_slot(plan(lab_dir, workers).link_slot)
        layout = plan(lab_dir, workers, link_slot=slot)
    state.data.update({"prefix": layout.prefix, "dir": str(lab_dir), "workers": workers,
                       "link_slot": slot, "complete": False})
    state.save()
    started = time.monotonic()
    try:
        _build(layout, state)
    except BaseException:
        say(f"lab {layout.prefix}: up failed; tearing down what was made")
        down(lab_dir, remove_files=False, say=lambda _m: None)
        raise
    state = State.load(lab_dir)  # the build saved more (host keys, version, pids)
    state.data["complete"] = True
    state.save()
    say(f"lab {layout.prefix} up: bastion {layout.bastion_address}, {len(layout.hosts)} hosts "
        f"in {time.monotonic() - started:.1f}s; inventory {lab_dir / 'inventory.yaml'}")
    return layout


def _build(layout: Layout, state: State) -> None:
    lab_dir = layout.dir
    _mountpoints(state)
    client_public = ensure_keypair(lab_dir / "id_ed25519", "mzk-lab")
    authorized = lab_dir / "authorized_keys"
    write_private(authorized, f"{client_public}\n".encode())
    with ThreadPoolExecutor(max_workers=2) as pool:
        net = pool.submit(_network, layout, state)
        prepared: dict[str | None, tuple[str, list[tuple[Path, str]]]] = {
            None: hosts.prepare_host_files(layout, None, authorized)}
        for host in layout.hosts:
            prepared[host.name] = hosts.prepare_host_files(layout, host, authorized)
        net.result()
    pids = {"bastion": hosts.start_sshd(layout.bastion_ns, lab_dir / "hosts" / "bastion",
                                   prepared[None][1], "bastion")}
    for host in layout.hosts:
        pids[host.name] = hosts.start_sshd(host.netns, host.home(lab_dir), prepared[host.name][1],
                                      host.name)
    state.data["pids"] = pids
    state.save()
    hosts.wait_for_sshd(layout, pids)
    keys = {"bastion": prepared[None][0], **{h.name: prepared[h.name][0] for h in layout.hosts}}
    state.data["host_keys"] = keys
    state.data["etcd_volumes"] = volumes.ensure(layout, lambda _m: None)
    state.save()
    _write_inventory(layout, keys)
    _balancers(layout)


def restart_sshd(lab_dir: Path, name: str) -> int:
    """Stop one host's sshd listener (open sessions stay) and start it again, e.g. after
    its host key file changed; returns the new pid."""
    lab_dir = lab_dir.resolve()
    state = State.load(lab_dir)
    layout = plan(lab_dir, state.data.get("workers", 3), state.data.get("link_slot"))
    home = lab_dir / "hosts" / name
    pid = state.data["pids"].get(name)
    if pid_alive(pid, str(home)):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while pid_alive(pid, str(home)) and time.monotonic() < deadline:
            time.sleep(0.01)
    (home / "sshd" / "sshd.pid").unlink(missing_ok=True)
    netns = layout.bastion_ns if name == "bastion" else layout.host(name).netns
    binds = hosts.binds(home, name != "bastion")
    new = hosts.start_sshd(netns, home, binds, name)
    state.data["pids"][name] = new
    state.save()
    hosts.wait_for_sshd(layout, {name: new})
    return new


def power_off(lab_dir: Path, name: str) -> None:
    """A host's machine dies: every process of its namespace and of its cgroup subtree
    (its pods run in namespaces of their own) is killed."""
    lab_dir = lab_dir.resolve()
    state = State.load(lab_dir)
    host = plan(lab_dir, state.data.get("workers", 3), state.data.get("link_slot")).host(name)
    kill_namespace(host.netns)
    cgroups.remove(cgroups.root_for(host.netns))


def power_on(lab_dir: Path, name: str) -> int:
    """Boot a host that `power_off` stopped: /run starts empty (a tmpfs on a real host),
    its cgroup root is made again, then its sshd; the bootstrap starts the rest."""
    lab_dir = lab_dir.resolve()
    state = State.load(lab_dir)
    host = plan(lab_dir, state.data.get("workers", 3), state.data.get("link_slot")).host(name)
    run = host.home(lab_dir) / "fs" / "run"
    for entry in run.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (run / "sshd").mkdir()
    cgroups.create(cgroups.root_for(host.netns))
    return restart_sshd(lab_dir, name)


def _kubernetes_version() -> str:
    """The version of the local binaries (MZK_K8S_BIN_DIR) if any, else the newest pinned
    official release."""
    directory = k8s_bin.resolve_dir(None)
    found = k8s_bin.version_of(directory) if directory is not None else None
    return found or supported_versions()[0]


def _write_inventory(layout: Layout, keys: dict[str, str] | None = None) -> Path:
    state = State.load(layout.dir)
    keys = keys or state.data["host_keys"]
    path = layout.dir / "inventory.yaml"
    version = state.data.get("kubernetes_version") or _kubernetes_version()
    state.data["kubernetes_version"] = version
    state.save()
    data = inventory_data(layout, keys, layout.dir / "id_ed25519", version,
                          state.data.get("etcd_volumes", {}))
    # The lab's "cloud" signs its launched hosts' identity documents; the approver trusts it.
    data["cluster"]["instance_identity_trust"] = imds.ensure_key(layout.dir)
    text = ("# Written by `python -m bootstrap lab up`. Endpoints are the lab's haproxy "
            "frontends\n# (one per zone, one regional) in the router namespace.\n"
            + yaml.safe_dump(data, sort_keys=False))
    write_private(path, text.encode(), 0o644)
    return path


def _balancers(layout: Layout) -> None:
    """Issue the PKI (DIR/pki, where apply looks by default) so the load balancers can
    verify API servers against the cluster CA, then run them."""
    state = State.load(layout.dir)
    inventory = load_inventory(layout.dir / "inventory.yaml")
    pki = generate(inventory, layout.dir / "pki")
    # Health checks trust what the hosts trust: the cluster CA, and during a rotation
    # (`rotate-ca`) the incoming one too; `lab up` between phases reloads haproxy.
    local = pki.out_dir / "local" / "pki"
    ca_file = layout.dir / "balancers" / "ca-bundle.crt"
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    bundle = b"".join(p.read_bytes() for p in (local / "ca.crt", local / "next" / "ca.crt")
                      if p.exists())
    if not ca_file.exists() or ca_file.read_bytes() != bundle:
        write_private(ca_file, bundle, 0o644)
    pid = state.data.get("pids", {}).get("haproxy")
    try:
        new = balancers.ensure(layout, ca_file, pid)
    except RuntimeError as err:
        raise LabError(f"lab load balancers: {err}") from err
    state.data.setdefault("pids", {})["haproxy"] = new
    state.save()


# --------------------------------------------------------------------------- down


def _remove_cgroups(prefix: str) -> None:
    """Every lab host's cgroup subtree (pods live in their own network namespaces, so
    killing the host's namespace does not reach them)."""
    roots = {p.name for h in cgroups.hierarchies() for p in h.glob(prefix + "-*")}
    left = [d for root in sorted(roots) for d in cgroups.remove("/" + root)]
    if left:
        raise LabError(f"lab {prefix}: cgroups left after down: {', '.join(left[:5])}")


def down(lab_dir: Path, remove_files: bool = True, say: Say = print) -> list[str]:
    """Kill every process in the lab's namespaces, delete the namespaces, the root veth and
    (with remove_files) the files up made. Works from the state file and by prefix scan;
    returns the namespaces removed."""
    lab_dir = lab_dir.resolve()
    state = State.load(lab_dir)
    prefix = state.data.get("prefix") or plan(lab_dir, 0).prefix
    for name, pid in state.data.get("pids", {}).items():
        if pid_alive(pid, str(lab_dir / "hosts" / name)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    existing = lab_namespaces(prefix)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(kill_namespace, existing))
    _remove_cgroups(prefix)
    if existing:
        _ip([], [f"netns del {ns}" for ns in existing], check=False, force=True)
    root_if = state.data.get("root_if") or plan(lab_dir, 0).root_if
    if Path(f"/sys/class/net/{root_if}").exists():
        _ip(["link", "del", root_if], check=False)
    _remove_guard_routes(_live_slots())
    volumes.release(lab_dir)
    left = lab_namespaces(prefix)
    if left:
        raise LabError(f"lab {prefix}: namespaces left after down: {', '.join(left)}")
    if remove_files:
        _remove_mountpoints(state)
        imds.remove(lab_dir)
        for name in ("hosts", "balancers", "pki", "id_ed25519", "id_ed25519.pub",
                     "authorized_keys", "inventory.yaml", STATE_FILE):
            path = lab_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        try:
            lab_dir.rmdir()
        except OSError:
            pass
    else:
        state.data.update({"namespaces": [], "pids": {}, "complete": False, "launched": []})
        if state.path.exists():
            state.save()
    say(f"lab {prefix} down: removed {len(existing)} namespace(s)")
    return existing


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class HostStatus:
    name: str
    zone: str
    address: str
    sshd_up: bool

    def line(self) -> str:
        return f"{self.name:<10} {self.zone:<8} {self.address:<15} " \
               f"sshd {'up' if self.sshd_up else 'down'}"


def status(lab_dir: Path) -> list[HostStatus]:
    """One entry per host (bastion first): sshd is up when its namespace exists and the
    sshd it started is alive and listening (its pid file is written)."""
    lab_dir = lab_dir.resolve()
    state = State.load(lab_dir)
    if not state.data.get("prefix"):
        return []
    layout = plan(lab_dir, state.data.get("workers", 3), state.data.get("link_slot"))
    namespaces = set(lab_namespaces(layout.prefix))
    pids = state.data.get("pids", {})

    def up_(name: str, ns: str) -> bool:
        home = lab_dir / "hosts" / name
        return ns in namespaces and pid_alive(pids.get(name), str(home)) \
            and (home / "sshd" / "sshd.pid").exists()

    out = [HostStatus("bastion", "-", layout.bastion_address, up_("bastion", layout.bastion_ns))]
    out += [HostStatus(h.name, h.zone, h.address, up_(h.name, h.netns)) for h in layout.hosts]
    return out
