"""The lab's API load balancers: one haproxy in the router namespace, with the topology
the AWS program builds (seed 004, part 1).

- One frontend per zone, at an address inside that zone: its backend is the zone's own
  control-plane host, with the other zones' hosts as backups, so zone A's kubelets and pods
  reach cp-a, and reach cp-b or cp-c only while cp-a has no ready API server.
- One regional frontend over every control-plane host (the admin kubeconfig's endpoint).
- Konnectivity (8132) on each zone's frontend, over every zone's proxy-server.
- Health checks call `/readyz` over TLS and verify the API server's certificate against the
  cluster CA and the host's name: a host that answers TCP but is not ready, or presents a
  certificate our CA did not sign, takes no traffic.
- TCP passthrough: the API server itself authenticates clients by their certificates.
  A connection refused during a restart is retried at once on another server.

Checks run every 300 ms, one failure marks a server down and two successes bring it back:
a restarted API server takes traffic only once it is ready again.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

from bootstrap.egress import hostconfig
from bootstrap.lab.layout import Layout

HAPROXY = "/usr/sbin/haproxy"
CONFIG = "haproxy.cfg"
SOCKET = "haproxy.sock"
CHECK_INTERVAL_MS = 300


def render(layout: Layout, ca_file: Path, api_port: int = 6443) -> str:
    cps = [h for h in layout.hosts if "control-plane" in h.roles]
    try:
        trusted = hashlib.sha256(ca_file.read_bytes()).hexdigest()[:16]
    except OSError:
        trusted = "-"
    lines = [
        "# Written by `python -m bootstrap lab up`: the lab's API load balancers.",
        f"# Trusted CAs: {trusted} (a new bundle reloads haproxy)",
        "global",
        "    maxconn 4096",
        # The next haproxy takes the listening sockets over from this one (-x): a reload
        # drops nothing that waited in the old listener's accept queue.
        f"    stats socket {layout.dir / 'balancers' / SOCKET} mode 600 level admin "
        "expose-fd listeners",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 2s",
        "    retries 5",
        "    option redispatch 1",  # every retry may go to another server
        f"    default-server inter {CHECK_INTERVAL_MS}ms fall 1 rise 2 check check-ssl "
        f"verify required ca-file {ca_file}",
        "",
    ]

    def listen(name: str, address: str, servers: list[tuple[str, str, bool]]) -> None:
        nonlocal lines
        lines += [f"listen {name}", f"    bind {address}:{api_port}",
                  "    option httpchk", "    http-check send meth GET uri /readyz",
                  "    http-check expect status 200", "    option allbackups"]
        lines += [f"    server {server} {addr}:{api_port} verifyhost {server}"
                  f"{' backup' if backup else ''}" for server, addr, backup in servers]
        lines.append("")

    for zone in sorted({h.zone for h in cps}):
        listen(f"api-{zone}", layout.zone_endpoint(zone),
               [(h.name, h.address, h.zone != zone) for h in cps])
    listen("api-regional", layout.regional_endpoint, [(h.name, h.address, False) for h in cps])
    # Konnectivity agents dial their zone's endpoint until they hold a connection to every
    # proxy-server, so here every zone's frontend balances over every zone's server (TLS
    # end to end; the check is the server's plain /healthz). Least connections: an agent's
    # next dial goes to the server it lacks (a new or restarted one holds the fewest).
    for zone in sorted({h.zone for h in cps}):
        lines += [f"listen konnectivity-{zone}",
                  f"    bind {layout.zone_endpoint(zone)}:{hostconfig.AGENT_PORT}",
                  "    balance leastconn", "    option httpchk",
                  "    http-check send meth GET uri /healthz",
                  "    http-check expect status 200"]
        lines += [f"    server {h.name} {h.address}:{hostconfig.AGENT_PORT} "
                  f"port {hostconfig.HEALTH_PORT} no-check-ssl" for h in cps]
        lines.append("")
    return "\n".join(lines)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return "haproxy" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def ensure(layout: Layout, ca_file: Path, pid: int | None) -> int:
    """Run haproxy with the current configuration in the router namespace; restart it only
    if the configuration changed or it died. Returns its pid."""
    path = layout.dir / "balancers" / CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render(layout, ca_file)
    changed = not path.exists() or path.read_text() != text
    if not changed and _alive(pid):
        assert pid is not None
        return pid
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    # A running haproxy hands over: the new one takes its listening sockets (-x, through
    # the old one's stats socket), then the old one finishes its connections (-sf); no
    # connection is refused or dropped from an accept queue.
    handover = ["-sf", str(pid)] if _alive(pid) else []
    if handover and (path.parent / SOCKET).exists():
        handover = ["-x", str(path.parent / SOCKET), *handover]
    log = open(path.parent / "haproxy.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(["ip", "netns", "exec", layout.router_ns, HAPROXY, "-db",
                                 "-f", str(path), *handover], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    finally:
        log.close()
    time.sleep(0.1)
    if proc.poll() is not None:
        tail = (path.parent / "haproxy.log").read_text(errors="replace")[-400:]
        raise RuntimeError(f"haproxy exited at start: {tail}")
    if handover and pid is not None:
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    return proc.pid
