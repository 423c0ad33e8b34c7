"""Connect and gather facts: one command per host whose output a pure parser reads."""

from __future__ import annotations

from typing import Any

from bootstrap.engine import HostContext, Step, all_hosts
from bootstrap.hostfiles import parse_states, state_script
from bootstrap.services import LAB_MARKER, parse_status, status_script
from bootstrap.steps import cluster_objects, control_plane
from bootstrap.steps.binaries import K8S_RELEASE_MARK
from bootstrap.steps.pki import watched_paths

COMMANDS = ("etcd", "etcdctl", "python3", "sha256sum", "base64", "mktemp", "stat", "setsid",
            "curl", "tar")

SCRIPT_ETCD = ('echo "etcd_version $( (etcd --version 2>/dev/null || echo x x -) | head -n1 '
               "| awk '{print $3}')\"")
FILES_MARK = "MZK_FILE_STATES"

SCRIPT = "\n".join([
    'echo "kernel $(uname -s) $(uname -r)"',
    'echo "arch $(uname -m)"',
    'echo "uid $(id -u)"',
    f'[ -f {LAB_MARKER} ] && echo "lab 1" || echo "lab 0"',
    '[ -d /run/systemd/system ] && echo "systemd 1" || echo "systemd 0"',
    'echo "time $(date -u +%s)"',
    *(f'echo "bin.{c} $(command -v {c} || echo -)"' for c in COMMANDS),
    "echo \"free_kb $(df -Pk /var/lib | awk 'NR==2{print $4}')\"",
    # What etcd left on the host (units, data): lets etcd-retire skip clean hosts.
    'echo "etcd_traces $(ls -d /etc/systemd/system/etcd*.service /var/lib/etcd/*/member '
    '2>/dev/null | tr "\\n" " ")"',
    f'echo "k8s_release $(cat {K8S_RELEASE_MARK} 2>/dev/null || echo -)"',
])


def parse(text: str) -> dict[str, Any]:
    """The facts as values: {"kernel": "Linux 6.1", "lab": True, "bin": {"etcd": path|None}}."""
    facts: dict[str, Any] = {"bin": {}}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if key.startswith("bin."):
            facts["bin"][key[4:]] = None if value in ("", "-") else value
        elif key in ("lab", "systemd"):
            facts[key] = value == "1"
        elif key in ("uid", "time", "free_kb"):
            facts[key] = int(value) if value.isdigit() else None
        elif key == "etcd_traces":
            facts[key] = tuple(value.split())
        elif key == "k8s_release":
            facts[key] = None if value in ("", "-") else value
        elif key == "etcd_version":
            facts[key] = None if value in ("", "-") else value
        elif key and key != "service":
            facts[key] = value
    return facts


def gather(ctx: HostContext) -> None:
    """One round trip: the facts, etcd's version on etcd hosts (a Go binary's start-up is
    not free), the state of the control plane's services, the state of the files later
    steps compare, and on the first control-plane host the cluster objects' state."""
    script = SCRIPT + ("\n" + SCRIPT_ETCD if ctx.host.has("etcd") else "")
    if ctx.host.has("control-plane"):
        script += "\n" + status_script(control_plane.SERVICES)
    watched = watched_paths(ctx) + control_plane.watched_paths(ctx)
    script += f"\necho {FILES_MARK}\n" + (state_script(watched) if watched else "")
    objects = "pki" in ctx.shared and ctx.inventory.control_plane[:1] == (ctx.host,)
    if objects:
        script += cluster_objects.probe_script(ctx)
    out = ctx.runner.run("sh -s", stdin=script.encode()).stdout
    head, marked, rest = out.partition(f"{FILES_MARK}\n")
    files, _, probed = rest.partition(f"{cluster_objects.MARK}\n")
    ctx.facts.update(parse(head))
    ctx.facts["services"] = parse_status(head)
    if watched and marked:
        ctx.facts["file_states"] = parse_states(watched, files)
    if objects:
        ctx.facts["objects"] = cluster_objects.parse_probe(probed)


FACTS = Step("facts", all_hosts, run=gather)
