"""Change a running lab's worker count in place: new workers get their namespace, link,
sshd and host key; removed ones (the highest numbers) lose theirs. Nothing else is touched:
the control-plane hosts, their etcd and API servers, the bastion, the router and its load
balancers keep running. Worker names, addresses and router links follow from their number
(`layout.plan`), so the workers that stay keep them.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from bootstrap.lab import build, cgroups
from bootstrap.lab import hosts as lab_hosts
from bootstrap.lab.layout import LAB_NET, LabHost, Layout, plan


def resize(layout_now: Layout, workers: int, say: build.Say) -> Layout:
    """From the running lab's layout to `workers` workers; returns the new layout."""
    lab_dir = layout_now.dir
    state = build.State.load(lab_dir)
    layout = plan(lab_dir, workers, link_slot=state.data.get("link_slot"))
    before = {h.name for h in layout_now.hosts}
    after = {h.name for h in layout.hosts}
    added = [h for h in layout.hosts if h.name not in before]
    removed = [h for h in layout_now.hosts if h.name not in after]
    if removed:
        _remove(layout_now, removed, state)
    if added:
        add_hosts(layout, added, state)
    state = build.State.load(lab_dir)
    state.data["workers"] = workers
    state.data["namespaces"] = list(layout.namespaces)
    state.save()
    say(f"lab {layout.prefix}: workers {len(before) - 3} -> {workers} in place "
        f"(added {', '.join(h.name for h in added) or 'none'}; removed "
        f"{', '.join(h.name for h in removed) or 'none'})")
    return layout


def _remove(layout: Layout, hosts: list[LabHost], state: build.State) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lab_hosts.kill_namespace, [h.netns for h in hosts]))
    for host in hosts:
        cgroups.remove(cgroups.root_for(host.netns))
    # Deleting a namespace deletes its end of the veth, and with it the router's end.
    build._ip([], [f"netns del {h.netns}" for h in hosts], check=False, force=True)
    for host in hosts:
        state.data["pids"].pop(host.name, None)
        state.data.get("host_keys", {}).pop(host.name, None)
        shutil.rmtree(host.home(layout.dir), ignore_errors=True)
    state.save()


def add_hosts(layout: Layout, hosts: list[LabHost], state: build.State) -> None:
    """Namespaces, links, files and sshds of new hosts (workers, or launched nodes)."""
    state.add("namespaces", *(h.netns for h in hosts))
    build._ip([], [f"netns add {h.netns}" for h in hosts])
    router = []
    for host in hosts:
        router += [f"link add {host.router_if} type veth peer name eth0 netns {host.netns}",
                   f"link set {host.router_if} master {host.bridge}",
                   f"link set {host.router_if} up"]
    build._ip(["-n", layout.router_ns], router)
    for host in hosts:
        proc = subprocess.run(["ip", "-n", host.netns, "-batch", "-"], input="\n".join([
            "link set lo up", f"addr add {host.address}/24 dev eth0", "link set eth0 up",
            f"route add {LAB_NET} via {host.gateway}"]) + "\n", capture_output=True,
            text=True, check=False)
        if proc.returncode != 0:
            raise build.LabError(f"{host.netns}: {proc.stderr.strip()}")
    authorized = layout.dir / "authorized_keys"
    pids = {}
    keys = state.data.setdefault("host_keys", {})
    for host in hosts:
        public, binds = lab_hosts.prepare_host_files(layout, host, authorized)
        keys[host.name] = public
        pids[host.name] = lab_hosts.start_sshd(host.netns, host.home(layout.dir), binds,
                                            host.name)
    state.data["pids"].update(pids)
    state.save()
    lab_hosts.wait_for_sshd(layout, pids)
