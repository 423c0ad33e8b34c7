"""Preflight: what a host must already be before we change it. Checks only; a failure
names the host, what is wrong and the fix, and nothing is changed anywhere."""

from __future__ import annotations

import time

from bootstrap.engine import HostContext, Step, all_hosts
from bootstrap.errors import StepError

MAX_CLOCK_SKEW_S = 60  # certificates are back-dated 5 minutes; beyond a minute is a fault
MIN_FREE_KB_ETCD = 1024 * 1024
REQUIRED = ("sha256sum", "base64", "mktemp", "stat")


def problems(facts: dict, *, etcd: bool, now: float) -> list[str]:
    """Every reason this host cannot be bootstrapped, as 'what: fix' lines."""
    found = []
    if not str(facts.get("kernel", "")).startswith("Linux"):
        found.append(f"kernel is {facts.get('kernel')!r}: use a Linux host")
    missing = [c for c in REQUIRED if not facts["bin"].get(c)]
    if missing:
        found.append(f"missing commands {', '.join(missing)}: install coreutils")
    if facts.get("time") is None or abs(facts["time"] - now) > MAX_CLOCK_SKEW_S:
        found.append(f"clock is off by {int(facts.get('time') or 0) - int(now)} s: "
                     "run NTP (chrony) so certificates are valid")
    if not facts.get("lab") and not facts.get("systemd"):
        found.append("no systemd: boot the host with systemd")
    if facts.get("lab") and not facts["bin"].get("python3"):
        found.append("lab host without python3: install python3 (the lab supervisor)")
    if etcd and (facts.get("free_kb") or 0) < MIN_FREE_KB_ETCD:
        found.append(f"only {facts.get('free_kb')} KiB free under /var/lib: etcd needs 1 GiB")
    return found


def check(ctx: HostContext) -> None:
    found = problems(ctx.facts, etcd=ctx.host.has("etcd"), now=time.time())
    if found:
        raise StepError(f"{ctx.name}: preflight: " + "; ".join(found))


PREFLIGHT = Step("preflight", all_hosts, run=check)
