"""Node checks (seed 004, part 3): what a node must pass before it takes work.

`SCRIPT` runs on the node beside the other facts (one round trip) and prints raw readings;
`evaluate` turns them into failures, each a short phrase naming what to fix. Checked:
the runtime's socket is there (whether the runtime answers on it, the kubelet's Ready
condition says, checked with the registration), the kubelet's health endpoint says ok, the
kernel values the kubelet protects, the cgroup controllers it needs, the clock against this
machine's (and NTP sync where systemd says), the node's inventory address on one of its
interfaces.
The node's name and address as the API server registered them are checked on the cluster
side (bootstrap.steps.nodes).
"""

from __future__ import annotations

from dataclasses import dataclass

from bootstrap.node.kubelet_config import HEALTHZ_PORT, KERNEL_DEFAULTS, RUNTIME_SOCKET

CLOCK_SKEW_LIMIT = 2.0  # seconds, beyond the SSH round trip itself
# cgroup controllers the kubelet needs for pods' limits (v2 names; v1 hierarchies likewise).
CONTROLLERS = ("cpu", "memory", "pids")

SCRIPT = "\n".join([
    f"for k in {' '.join(KERNEL_DEFAULTS)}; do v=-; read -r v < /proc/sys/$k; "
    'echo "nc.sysctl.$k $v"; done',
    '[ -f /sys/fs/cgroup/cgroup.controllers ] && '
    '{ read -r c < /sys/fs/cgroup/cgroup.controllers; echo "nc.cgroup v2 $c"; } || '
    '{ printf "nc.cgroup v1"; for c in /sys/fs/cgroup/*; do printf " %s" "${c##*/}"; done; '
    'echo; }',
    'r=-; read -r r < /etc/mzk/lab-cgroup-root 2>/dev/null; echo "nc.cgroup_root $r"',
    # The socket here; whether the runtime answers it, the kubelet tells (its Ready
    # condition fails on a runtime that does not): no Go client started on every apply.
    f'[ -S {RUNTIME_SOCKET} ] && echo "nc.runtime ok" || echo "nc.runtime no"',
    f'echo "nc.kubelet $(curl -fsS -m 2 http://127.0.0.1:{HEALTHZ_PORT}/healthz 2>/dev/null '
    '|| echo no)"',
    'echo "nc.clock $(date +%s.%N)"',
    'echo "nc.ntp $(timedatectl show -p NTPSynchronized --value 2>/dev/null || echo -)"',
    "echo \"nc.addresses $(ip -o -4 addr show 2>/dev/null | awk '{print $4}' | "
    "cut -d/ -f1 | tr '\\n' ' ')\"",
])


@dataclass(frozen=True)
class Readings:
    values: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Readings:
        values = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key.startswith("nc."):
                values[key[3:]] = value.strip()
        return cls(values)


def evaluate(readings: Readings, address: str, lab: bool, local_before: float,
             local_after: float) -> list[str]:
    """Failures (empty: the node passes). `local_before`/`local_after`: this machine's
    clock around the round trip that read the node's."""
    v = readings.values
    failed = []
    if v.get("runtime") != "ok":
        failed.append(f"container runtime socket {RUNTIME_SOCKET} missing")
    if v.get("kubelet") != "ok":
        failed.append(f"kubelet not healthy (127.0.0.1:{HEALTHZ_PORT}/healthz)")
    wrong = [f"{k.replace('/', '.')}={v.get('sysctl.' + k, '?')} (want {want})"
             for k, want in KERNEL_DEFAULTS.items() if v.get("sysctl." + k) != want]
    if wrong:
        failed.append("kernel settings: " + ", ".join(wrong))
    kind, _, names = v.get("cgroup", "").partition(" ")
    missing = [c for c in CONTROLLERS if c not in names.split()]
    if kind not in ("v1", "v2") or missing:
        failed.append(f"cgroup controllers missing: {', '.join(missing) or 'all'}")
    elif kind == "v1" and not lab:
        failed.append("cgroup v1: the kubelet needs cgroup v2 on real hosts (boot with "
                      "systemd.unified_cgroup_hierarchy=1)")
    if lab and v.get("cgroup_root", "-") == "-":
        failed.append("lab host without its own cgroup root (/etc/mzk/lab-cgroup-root)")
    try:
        clock = float(v.get("clock", ""))
    except ValueError:
        failed.append("clock unreadable")
    else:
        if clock < local_before - CLOCK_SKEW_LIMIT or clock > local_after + CLOCK_SKEW_LIMIT:
            skew = clock - (local_before + local_after) / 2
            failed.append(f"clock off by {skew:+.1f} s (limit {CLOCK_SKEW_LIMIT:.0f} s)")
    if v.get("ntp") == "no":
        failed.append("clock not synchronised (timedatectl: NTPSynchronized=no)")
    if address not in v.get("addresses", "").split():
        failed.append(f"address {address} is on none of the node's interfaces")
    return failed
