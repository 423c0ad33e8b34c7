"""Connect and gather facts: one command per host whose output a pure parser reads."""

from __future__ import annotations

from typing import Any

from bootstrap.engine import HostContext, Step, all_hosts
from bootstrap.hostfiles import parse_states, state_script
from bootstrap.services import LAB_MARKER
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
        elif key == "etcd_version":
            facts[key] = None if value in ("", "-") else value
        elif key:
            facts[key] = value
    return facts


def gather(ctx: HostContext) -> None:
    """One round trip: the facts, etcd's version on etcd hosts (a Go binary's start-up is
    not free), and the state of the files later steps compare."""
    script = SCRIPT + ("\n" + SCRIPT_ETCD if ctx.host.has("etcd") else "")
    watched = watched_paths(ctx)
    if watched:
        script += f"\necho {FILES_MARK}\n" + state_script(watched)
    out = ctx.runner.run("sh -s", stdin=script.encode()).stdout
    head, marked, files = out.partition(f"{FILES_MARK}\n")
    ctx.facts.update(parse(head))
    if marked:
        ctx.facts["file_states"] = parse_states(watched, files)


FACTS = Step("facts", all_hosts, run=gather)
