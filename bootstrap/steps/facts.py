"""Connect and gather facts: one command per host whose output a pure parser reads."""

from __future__ import annotations

import time
from typing import Any

from bootstrap.egress import hostconfig, konnectivity_release
from bootstrap.engine import HostContext, Step, all_hosts
from bootstrap.hostfiles import parse_states, state_script
from bootstrap.node import checks
from bootstrap.services import LAB_MARKER, parse_status, status_script
from bootstrap.steps import (
    addons,
    cluster_objects,
    control_plane,
    egress,
    egress_nodes,
    etcd,
    etcd_volume,
    guard,
    node_join,
    nodes,
    pod_network,
    ssh_access,
)
from bootstrap.steps.binaries import K8S_RELEASE_MARK
from bootstrap.steps.pki import watched_paths

COMMANDS = ("etcd", "etcdctl", "python3", "sha256sum", "base64", "mktemp", "stat", "setsid", "nft",
            "curl", "tar", "containerd", "ctr", "runc")

SCRIPT_ETCD = ('echo "etcd_version $( (etcd --version 2>/dev/null || echo x x -) | head -n1 '
               "| awk '{print $3}')\"")
SECTION_MARK = "MZK_SECTION"


def traces_line(key: str, patterns: list[str]) -> str:
    """`key <every existing path matching the globs>` with shell built-ins only."""
    return (f"printf '{key} '; for f in {' '.join(patterns)}; do [ -e \"$f\" ] && "
            "printf '%s ' \"$f\"; done; echo")

# Few processes: on a converged cluster this script is most of a no-op apply's time, on
# every host at once. Shell built-ins where they do (command -v, read, globs, test).
SCRIPT = "\n".join([
    "set -- $(uname -s -r -m)",
    'echo "kernel $1 $2"',
    'echo "arch $3"',
    'echo "uid $(id -u)"',
    f'[ -f {LAB_MARKER} ] && echo "lab 1" || echo "lab 0"',
    '[ -d /run/systemd/system ] && echo "systemd 1" || echo "systemd 0"',
    'echo "time $(date -u +%s)"',
    f"for c in {' '.join(COMMANDS)}; do printf 'bin.%s ' \"$c\"; command -v \"$c\" || echo -; done",
    "echo \"free_kb $(df -Pk /var/lib | awk 'NR==2{print $4}')\"",
    # What etcd left on the host (units, data): lets etcd-retire skip clean hosts.
    traces_line("etcd_traces", ["/etc/systemd/system/etcd*.service", "/var/lib/etcd/*/member"]),
    f'r=-; read -r r < {K8S_RELEASE_MARK} 2>/dev/null; echo "k8s_release $r"',
    "for n in proxy-server proxy-agent; do r=-; read -r r < "
    f'{konnectivity_release.MARKER_DIR}/konnectivity-$n 2>/dev/null; '
    'echo "konnectivity_release.$n $r"; done',
])


def parse(text: str) -> dict[str, Any]:
    """The facts as values: {"kernel": "Linux 6.1", "lab": True, "bin": {"etcd": path|None}}."""
    facts: dict[str, Any] = {"bin": {}}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if key.startswith("bin."):
            facts["bin"][key[4:]] = None if value in ("", "-") else value
        elif key in ("lab", "systemd", "drained"):
            facts[key] = value == "1"
        elif key in ("uid", "time", "free_kb"):
            facts[key] = int(value) if value.isdigit() else None
        elif key in ("etcd_traces", "control_plane_traces", "egress_traces", "agent_traces"):
            facts[key] = tuple(value.split())
        elif key == "k8s_release":
            facts[key] = None if value in ("", "-") else value
        elif key == "etcd_version":
            facts[key] = None if value in ("", "-") else value
        elif key and key != "service":
            facts[key] = value
    return facts


def sections_script(base: str, sections: dict[str, str]) -> str:
    """Run `base` and every section side by side (background subshells, each into its own
    temp file), then print base's output followed by `MZK_SECTION <name>` and each
    section's: the round trip costs its slowest part, not the sum."""
    lines = ['t=$(mktemp -d)', f'( {base}\n) > "$t/base" 2>/dev/null &']
    names = list(sections)
    for i, name in enumerate(names):
        lines.append(f'( {sections[name]}\n) > "$t/{i}" 2>/dev/null &')
    lines += ["wait", 'cat "$t/base"']
    for i, name in enumerate(names):
        lines.append(f'echo "{SECTION_MARK} {name}"; cat "$t/{i}"')
    lines.append('rm -rf "$t"')
    return "\n".join(lines) + "\n"


def split_sections(text: str) -> tuple[str, dict[str, str]]:
    """(base output, section name -> output) of `sections_script`."""
    base, *rest = text.split(f"{SECTION_MARK} ")
    found = {}
    for chunk in rest:
        name, _, body = chunk.partition("\n")
        found[name.strip()] = body
    return base, found


def gather(ctx: HostContext) -> None:
    """One round trip: the facts, etcd's version on etcd hosts (a Go binary's start-up is
    not free), the state of the services it runs, the state of the files later steps
    compare, and on the first control-plane host the cluster objects' state."""
    sections: dict[str, str] = {}
    if ctx.host.has("etcd"):
        sections["etcd"] = SCRIPT_ETCD
        # Member lists from one member only (any member's answer is the cluster's): the
        # Go clients are most of a no-op's CPU on every control-plane host at once.
        first = ctx.inventory.etcd_members[:1] == (ctx.host,)
        sections.update(etcd.fact_scripts(members=first))
    watched_services = (("etcd", "etcd-events") if ctx.host.has("etcd") else ()) + (
        control_plane.SERVICES + egress.SERVICES + node_join.SERVICES
        if ctx.host.has("control-plane") else ()) + (
        (hostconfig.PROXY_AGENT, *nodes.SERVICES, *pod_network.SERVICES)
        if ctx.host.has("node") else ())
    if watched_services:
        sections["services"] = status_script(watched_services)
    if ctx.host.has("control-plane"):
        sections["drain"] = control_plane.DRAIN_SCRIPT
    sections.update(etcd_volume.facts_section(ctx))
    watched = watched_paths(ctx) + control_plane.watched_paths(ctx) + \
        ssh_access.watched_paths(ctx) + egress.watched_paths(ctx) + \
        egress_nodes.watched_paths(ctx) + nodes.watched_paths(ctx) + \
        node_join.watched_paths(ctx) + pod_network.watched_paths(ctx)
    if ctx.host.has("node"):
        sections["egress_firewall"] = egress_nodes.FACTS_SCRIPT
        sections["node"] = nodes.facts_script(ctx.shared.get("lab_images"))
    if ctx.inventory.ssh.authorized_keys:
        sections["ssh_user"] = ssh_access.facts_script(ctx.inventory.ssh.user)
    if watched:
        sections["files"] = state_script(watched)
    objects = "pki" in ctx.shared and ctx.inventory.control_plane[:1] == (ctx.host,)
    if objects:
        sections.update(cluster_objects.probe_scripts(ctx))
        sections.update(addons.probe_scripts(ctx))
    base_script = SCRIPT if ctx.host.has("control-plane") else "\n".join([
        SCRIPT, traces_line("control_plane_traces", control_plane.TRACES_PATHS),
        traces_line("egress_traces", egress.TRACES_PATHS)])
    if not ctx.host.has("node"):
        base_script += "\n" + traces_line("agent_traces", [egress_nodes.AGENT_UNIT])
    locking = guard.start_lock(ctx)  # beside the facts: the lock costs no round trip
    before = time.time()
    try:
        out = ctx.runner.run("sh -s",
                             stdin=sections_script(base_script, sections).encode()).stdout
    finally:
        guard.finish_lock(ctx, locking)
    after = time.time()
    base, found = split_sections(out)
    ctx.facts.update(parse(base + found.get("etcd", "") + found.get("drain", "")
                           + found.get("ssh_user", "") + found.get("egress_firewall", "")))
    ctx.facts["services"] = parse_status(found.get("services", ""))
    if ctx.host.has("etcd"):
        ctx.facts["etcd_facts"] = etcd.read_facts(found)
    if "files" in found:
        ctx.facts["file_states"] = parse_states(watched, found["files"])
    if "etcd_volume" in found:
        ctx.facts["etcd_volume_state"] = etcd_volume.VolumeState.parse(found["etcd_volume"])
    if objects:
        ctx.facts["objects"] = cluster_objects.parse_probe(found)
        ctx.facts["addons_state"] = addons.parse_probe(found)
    if "node" in found:
        readings = checks.Readings.parse(found["node"])
        ctx.facts["node_readings"] = readings.values
        ctx.facts["node_failures"] = checks.evaluate(readings, ctx.host.address,
                                                     bool(ctx.facts.get("lab")), before, after)


FACTS = Step("facts", all_hosts, run=gather)
