"""Latency of HTTP requests through the ssh-tunnel egress service, against going direct.

    python bench/egress_tunnel.py              # 1,000 requests per row (needs root: sshd)
    python bench/egress_tunnel.py -n 200

One node (sshd on 127.0.0.2) with a stand-in HTTP server, the service as the control plane
runs it, this script as the API server. Rows:

  direct, new connection        TCP connect + GET, the floor
  direct, reused connection     GET on one keep-alive connection
  tunnel, CONNECT per request   CONNECT through the service (mux + fd passing) + GET
  tunnel, reused tunnel         GET on one tunnel, as the API server reuses connections
  ssh -W process per tunnel     the alternative design: a `ssh -S <control socket> -W`
                                process per tunnel through the same master, + GET

Prints median, p99 and mean milliseconds per request. Loopback only: what is measured is
the cost added by the service and SSH, not a network.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.test_egress_tunnel import (  # noqa: E402
    Service,
    SSHNode,
    connect,
    keygen,
)


def timed(n: int, one: Callable[[], None]) -> list[float]:
    one()  # warm up
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        one()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def get_on(conn: http.client.HTTPConnection) -> None:
    conn.request("GET", "/bench")
    response = conn.getresponse()
    if response.status != 200 or not response.read().startswith(b"stand-in"):
        raise RuntimeError("unexpected answer from the stand-in")


def over(sock: socket.socket) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("node")
    conn.sock = sock
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="requests per row")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/egress_tunnel.py: needs root (it starts sshd)")

    root = Path(tempfile.mkdtemp(prefix="mzk-eb-"))
    node = SSHNode("node-1", "127.0.0.2", root / "node-1")
    service = None
    try:
        identity = root / "tunnel_key"
        node.prepare(keygen(identity, "mzk-tunnel bench"))
        node.start()
        service = Service(root / "svc", [node], identity, {})
        service.wait_state("node-1", "up")
        dest = f"{node.address}:{node.web_port}"
        ctl = service.root / "run" / "ctl" / "0"

        def direct_new() -> None:
            conn = http.client.HTTPConnection(node.address, node.web_port)
            get_on(conn)
            conn.close()

        keep = http.client.HTTPConnection(node.address, node.web_port)

        def tunnel_new() -> None:
            code, _, sock = connect(service.socket, dest)
            if code != 200:
                raise RuntimeError(f"CONNECT answered {code}")
            conn = over(sock)
            get_on(conn)
            conn.close()

        code, _, tunnel_sock = connect(service.socket, dest)
        tunnel = over(tunnel_sock)

        def ssh_w_process() -> None:
            mine, theirs = socket.socketpair()
            proc = subprocess.Popen(["ssh", "-F", "/dev/null", "-S", str(ctl), "-o",
                                     "ControlMaster=no", "-W", dest, "node"],
                                    stdin=theirs.fileno(), stdout=theirs.fileno())
            theirs.close()
            conn = over(mine)
            get_on(conn)
            conn.close()
            proc.wait()

        rows = [("direct, new connection", timed(args.n, direct_new)),
                ("direct, reused connection", timed(args.n, lambda: get_on(keep))),
                ("tunnel, CONNECT per request", timed(args.n, tunnel_new)),
                ("tunnel, reused tunnel", timed(args.n, lambda: get_on(tunnel))),
                ("ssh -W process per tunnel", timed(args.n, ssh_w_process))]
        keep.close()
        tunnel.close()

        print(f"{'requests: ' + str(args.n):<32}{'median ms':>10}{'p99 ms':>10}{'mean ms':>10}")
        for name, samples in rows:
            p99 = statistics.quantiles(samples, n=100)[98]
            print(f"{name:<32}{statistics.median(samples):>10.3f}{p99:>10.3f}"
                  f"{statistics.fmean(samples):>10.3f}")
        logins = node.accepted()
        masters = len(service.masters())
        print(f"SSH logins accepted by the node: {logins}; ssh masters: {masters}")
    finally:
        if service is not None:
            service.stop()
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
