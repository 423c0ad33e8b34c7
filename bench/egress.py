"""Egress on the lab, 3 control-plane hosts and 12 nodes (4 per zone): what each egress mode
adds to a request against a direct connection, and how long `apply` takes to switch a live
cluster from one mode to the other. Needs root and MZK_K8S_BIN_DIR (as `bin/mzk` sets it).

    .venv/bin/python bench/egress.py [--requests 1000] [--workers 12]

Latency, measured on cp-a against node-1 (its fake kubelet: HTTPS, client certificate
required, as the API server's kubelet client presents one), each request on a new
connection and new TLS session (as the API server's dialer opens them):
- direct: TCP to node-1:10250 (the node's firewall is lifted for this measurement only);
- egress: CONNECT through the egress socket, then the same TLS request through the tunnel;
- API server: GET /api/v1/nodes/node-1/proxy/... on cp-a's API server (keep-alive to the
  API server; the API server dials the node through its egress), the path users take.
Median and p99 per kind, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootstrap.apply_command import execute, local_binaries  # noqa: E402
from bootstrap.egress import firewall, hostconfig  # noqa: E402
from bootstrap.inventory import load  # noqa: E402
from bootstrap.lab import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAKE_KUBELET = ROOT / "tests" / "lab" / "fake_kubelet.py"
PKI = "/etc/kubernetes/pki"

# Runs inside cp-a's namespaces with the system python3: N requests of one kind.
CLIENT = r"""
import http.client, json, socket, ssl, statistics, sys, time
kind, n, node, addr = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
PKI = "/etc/kubernetes/pki"
tls = ssl.create_default_context(cafile=PKI + "/ca.crt")
tls.load_cert_chain(PKI + "/apiserver-kubelet-client.crt", PKI + "/apiserver-kubelet-client.key")
tls.check_hostname = False  # the kubelet's certificate names its IP; verified against the CA
def get(sock):
    s = tls.wrap_socket(sock)
    s.sendall(b"GET /bench HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:80]
def direct():
    get(socket.create_connection((addr, 10250), timeout=5))
def egress():
    u = socket.socket(socket.AF_UNIX)
    u.settimeout(5)
    u.connect(sys.argv[5])
    u.sendall(f"CONNECT {addr}:10250 HTTP/1.1\r\nHost: {addr}:10250\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += u.recv(1)
    assert b" 200 " in head.split(b"\r\n")[0], head
    get(u)
api = None
def apiserver():
    global api
    if api is None:
        ctx = ssl.create_default_context(cafile=PKI + "/ca.crt")
        ctx.load_cert_chain(PKI + "/apiserver-kubelet-client.crt",
                            PKI + "/apiserver-kubelet-client.key")
        ctx.check_hostname = False
        api = http.client.HTTPSConnection(sys.argv[5], 6443, context=ctx, timeout=10)
    api.request("GET", f"/api/v1/nodes/{node}/proxy/bench")
    r = api.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
run = {"direct": direct, "egress": egress, "api": apiserver}[kind]
for _ in range(20):
    run()
times = []
for _ in range(n):
    t = time.perf_counter()
    run()
    times.append((time.perf_counter() - t) * 1000)
times.sort()
print(json.dumps({"median": statistics.median(times), "p99": times[int(0.99 * len(times)) - 1]}))
"""


def nsenter(lab_dir: Path, host: str, argv: list[str], **kw):  # type: ignore[no-untyped-def]
    pid = json.loads((lab_dir / "lab-state.json").read_text())["pids"][host]
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", *argv], **kw)


def write_inventory(lab_dir: Path, mode: str) -> Path:
    data = yaml.safe_load((lab_dir / "inventory.yaml").read_text())
    data["cluster"]["egress"] = mode
    path = lab_dir / f"inventory-{mode}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def measure(lab_dir: Path, kind: str, n: int, node: str, address: str, extra: str) -> dict:
    out = nsenter(lab_dir, "cp-a", ["python3", "-c", CLIENT, kind, str(n), node, address,
                                    extra], capture_output=True, text=True, check=False,
                  timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{kind}: {out.stderr.strip()[-400:]}")
    result: dict = json.loads(out.stdout)
    return result


def latencies(lab_dir: Path, mode: str, n: int) -> list[tuple[str, dict]]:
    inventory = load(write_inventory(lab_dir, mode))
    node = inventory.host("node-1")
    rows = [(f"{mode} egress socket", measure(lab_dir, "egress", n, node.name, node.address,
                                              hostconfig.SOCKET)),
            (f"{mode} via API server", measure(lab_dir, "api", n, node.name, node.address,
                                               inventory.host("cp-a").address))]
    return rows


def direct(lab_dir: Path, n: int) -> dict:
    inventory = load(lab_dir / "inventory.yaml")
    node = inventory.host("node-1")
    nsenter(lab_dir, "node-1", ["sh", "-c", firewall.REMOVE], check=True)
    try:
        return measure(lab_dir, "direct", n, node.name, node.address, "-")
    finally:
        nsenter(lab_dir, "node-1", ["sh", "-c", firewall.LOAD], check=True)


def recovery(lab_dir: Path, service: str) -> float:
    """Seconds from SIGKILL of cp-a's egress service until cp-a's API server reaches
    node-1 again (its supervisor restarts the service; nothing else helps)."""
    inventory = load(lab_dir / "inventory.yaml")
    node = inventory.host("node-1")
    pid_file = lab_dir / "hosts" / "cp-a" / "fs" / "run" / "mzk" / f"{service}.pid"
    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
    started = time.perf_counter()
    while True:
        out = nsenter(lab_dir, "cp-a", ["python3", "-c", CLIENT, "api", "1", node.name,
                                        node.address, inventory.host("cp-a").address],
                      capture_output=True, text=True, check=False, timeout=60)
        if out.returncode == 0:
            return time.perf_counter() - started
        if time.perf_counter() - started > 120:
            raise SystemExit(f"{service}: cp-a did not reach node-1 within 120 s")
        time.sleep(0.05)


def switch(lab_dir: Path, mode: str, binaries) -> float:  # type: ignore[no-untyped-def]
    inventory = load(write_inventory(lab_dir, mode))
    started = time.perf_counter()
    execute(inventory, lab_dir / "pki", dry_run=False, binaries=binaries)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mzk-bench-egress-", dir=ROOT.parent) as tmp:
        lab_dir = Path(tmp) / "lab"
        kubelet = None
        try:
            build.up(lab_dir, workers=args.workers, say=lambda _m: None)
            inventory = load(write_inventory(lab_dir, "ssh-tunnel"))
            binaries = local_binaries(inventory, None)
            execute(inventory, lab_dir / "pki", dry_run=False, binaries=binaries)
            node = inventory.host("node-1")
            pid = json.loads((lab_dir / "lab-state.json").read_text())["pids"]["node-1"]
            kubelet = subprocess.Popen(
                ["nsenter", "-t", str(pid), "-n", "-m", "python3", str(FAKE_KUBELET),
                 node.name, node.address, "/var/lib/kubelet/pki/kubelet.crt",
                 "/var/lib/kubelet/pki/kubelet.key", f"{PKI}/ca.crt"],
                stdout=subprocess.PIPE, start_new_session=True)
            assert kubelet.stdout is not None and kubelet.stdout.readline() == b"ready\n"
            manifest = (f"apiVersion: v1\nkind: Node\nmetadata: {{name: {node.name}}}\n"
                        f"status:\n  addresses: [{{type: InternalIP, address: {node.address}}}]\n"
                        "  daemonEndpoints: {kubeletEndpoint: {Port: 10250}}\n")
            kubectl = str(Path(str(binaries.dir)) / "kubectl") if binaries else "kubectl"
            nsenter(lab_dir, "cp-a", [kubectl, "--kubeconfig=/etc/kubernetes/admin.conf",
                                      "apply", "-f", "-"], input=manifest.encode(), check=True,
                    capture_output=True)
            rows = [("direct", direct(lab_dir, args.requests))]
            rows += latencies(lab_dir, "ssh-tunnel", args.requests)
            tunnel_back = recovery(lab_dir, hostconfig.TUNNEL)
            to_konnectivity = switch(lab_dir, "konnectivity", binaries)
            rows += latencies(lab_dir, "konnectivity", args.requests)
            server_back = recovery(lab_dir, hostconfig.PROXY_SERVER)
            to_tunnels = switch(lab_dir, "ssh-tunnel", binaries)
        finally:
            if kubelet is not None:
                os.killpg(kubelet.pid, signal.SIGTERM)
                kubelet.wait(timeout=10)
            build.down(lab_dir, say=lambda _m: None)
    base = rows[0][1]["median"]
    print(f"egress latency, {args.requests} requests each, new connection + TLS per request "
          "(API server: keep-alive to it), ms")
    print(f"{'path':32} {'median':>8} {'p99':>8} {'added (median)':>15}")
    for name, r in rows:
        added = r["median"] - base if "socket" in name or name == "direct" else float("nan")
        print(f"{name:32} {r['median']:8.2f} {r['p99']:8.2f} {added:15.2f}")
    print(f"apply switching 3 control-plane hosts + {args.workers} nodes: ssh-tunnel -> "
          f"konnectivity {to_konnectivity:.1f} s, konnectivity -> ssh-tunnel {to_tunnels:.1f} s")
    print(f"cp-a's API server reaches node-1 again after its egress service was killed: "
          f"tunnel service {tunnel_back:.1f} s, proxy-server {server_back:.1f} s")


if __name__ == "__main__":
    main()
