"""Egress from the control plane to the nodes on the real lab, in both modes and across
switches: the API server reaches every node only through its egress service (SSH tunnels,
then Konnectivity, then SSH tunnels again), nodes' firewalls refuse the control plane
directly, and drills take an egress service or a node's host key away.

Each node runs its real kubelet, and a host-network pod serving HTTP on 8080 for the service
proxy; an impostor kubelet (`fake_kubelet.py`, another CA's certificate) stands in for one
node in one test. The tests run in file order on one lab, each leaving it converged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bootstrap.apply_command import execute
from bootstrap.egress import hostconfig
from bootstrap.inventory import Inventory
from bootstrap.lab import build
from bootstrap.services import LabSupervisor
from bootstrap.ssh import Connections

from . import workload
from .conftest import (
    KUBECTL,
    Lab,
    apply,
    check_lines,
    in_host,
    lab_unavailable,
    netns_commands,
    on,
    require_k8s_binaries,
    running_lab,
    until,
)

pytestmark = pytest.mark.lab
FAKE_KUBELET = Path(__file__).with_name("fake_kubelet.py")
PROOF_PORT = 8080
IMPOSTOR_HTTP_PORT = 18081
CPS = ("cp-a", "cp-b", "cp-c")
RECOVERY_BOUND_S = 15  # an egress service killed on one host serves again within this


def with_mode(inventory: Inventory, mode: str) -> Inventory:
    return dataclasses.replace(inventory, cluster=dataclasses.replace(
        inventory.cluster, egress=mode, egress_node_ports=(PROOF_PORT,)))


class Impostor:
    """A node whose kubelet is replaced by `fake_kubelet.py` serving another certificate:
    the real kubelet is stopped by its keeper, and the next apply starts it again."""

    def __init__(self, lab: Lab, node: str) -> None:
        self.lab, self.node = lab, node
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, cert: str, key: str) -> None:
        with Connections(self.lab.inventory) as conns:
            LabSupervisor().stop(conns.runner(self.node), "kubelet")
        pid = json.loads((self.lab.dir / "lab-state.json").read_text())["pids"][self.node]
        address = self.lab.inventory.host(self.node).address
        self.proc = subprocess.Popen(
            ["nsenter", "-t", str(pid), "-n", "-m", "python3", str(FAKE_KUBELET), self.node,
             address, cert, key, "/etc/kubernetes/pki/ca.crt", str(IMPOSTOR_HTTP_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == b"ready\n", line + self.proc.stdout.read()

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
            self.proc = None


def raw(lab: Lab, via: str, path: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """`kubectl get --raw PATH` against one control-plane host's own API server."""
    return in_host(lab, via, [KUBECTL(), "--kubeconfig=/etc/kubernetes/admin.conf",
                              "--request-timeout=5s", "get", "--raw", path], timeout=timeout)


def node_proxy(lab: Lab, via: str, node: str) -> str:
    """The node a kubelet says it runs pods for (its /pods through the API server's node
    proxy), or ERROR and why."""
    out = raw(lab, via, f"/api/v1/nodes/{node}/proxy/pods")
    if out.returncode != 0:
        return f"ERROR {out.stderr.strip()}"
    try:
        names = {p["spec"]["nodeName"] for p in json.loads(out.stdout)["items"]}
    except (ValueError, KeyError, TypeError):
        return f"ERROR not a pod list: {out.stdout[:200]}"
    return " ".join(sorted(names))


def service_proxy(lab: Lab, via: str, node: str) -> str:
    out = raw(lab, via, f"/api/v1/namespaces/kube-system/services/web-{node}:http/proxy/svc")
    return out.stdout.strip() if out.returncode == 0 else f"ERROR {out.stderr.strip()}"


def proof_objects(lab: Lab) -> str:
    """Per node, a host-network pod on it serving `<node> /svc` on PROOF_PORT, with a
    Service: the API server's service proxy goes to the pod's (the node's) address. In
    kube-system: host-network pods need a privileged namespace, and `apply` keeps every
    other namespace at baseline."""
    items = []
    for node in lab.inventory.nodes:
        n = node.name
        script = (f"mkdir -p /tmp/www && echo '{n} /svc' > /tmp/www/svc && "
                  f"exec /bin/busybox httpd -f -p {PROOF_PORT} -h /tmp/www")
        items.append({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": f"web-{n}", "namespace": "kube-system",
                                   "labels": {"proof": n}},
                      "spec": {"nodeName": n, "hostNetwork": True,
                               "terminationGracePeriodSeconds": 1,
                               "containers": [workload.container("web", script)]}})
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": f"web-{n}", "namespace": "kube-system"},
                      "spec": {"selector": {"proof": n}, "ports": [
                          {"name": "http", "port": 80, "targetPort": PROOF_PORT}]}})
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


@pytest.fixture(scope="module")
def eglab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three control-plane hosts, three nodes (one per zone), SSH tunnels first."""
    reason = lab_unavailable()
    if reason:
        pytest.fail(reason)
    require_k8s_binaries()
    with running_lab(tmp_path_factory, "eglab", workers=3) as running:
        running.inventory = with_mode(running.inventory, "ssh-tunnel")
        execute(running.inventory, running.dir / "pki", dry_run=False)
        for node in running.inventory.nodes:
            workload.import_on(running, node.name)
        assert on(running, "cp-a", f"{KUBECTL()} --kubeconfig=/etc/kubernetes/admin.conf "
                  "apply -f -", stdin=proof_objects(running).encode()).ok
        until(lambda: all(service_proxy(running, "cp-a", n.name) == f"{n.name} /svc"
                          for n in running.inventory.nodes), 90)
        yield running


def assert_every_node_reached_through_every_api_server(lab: Lab) -> None:
    for via in CPS:
        for node in lab.inventory.nodes:
            assert node_proxy(lab, via, node.name) == node.name, (via, node.name)
            assert service_proxy(lab, via, node.name) == f"{node.name} /svc", (via, node.name)


def assert_control_plane_cannot_reach_nodes_directly(lab: Lab, ssh_allowed: bool) -> None:
    for via in CPS:
        for node in lab.inventory.nodes:
            for port in (10250, PROOF_PORT):
                out = in_host(lab, via, ["curl", "-sk", "--max-time", "1", "-o", "/dev/null",
                                         "-w", "%{http_code}", f"https://{node.address}:{port}/"])
                assert out.returncode == 28, (via, node.name, port, out)  # 28: timed out
            ssh = in_host(lab, via, ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/"
                                     f"{node.address}/22 && head -c 4 <&3"], timeout=10)
            assert (ssh.stdout == "SSH-") == ssh_allowed, (via, node.name, ssh)



def cmdlines(lab: Lab, host: str) -> list[str]:
    """The command lines of a lab host's processes (those still running)."""
    found = []
    for pid in netns_commands(lab.layout.host(host).netns):
        with contextlib.suppress(FileNotFoundError):
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                         .decode(errors="replace"))
    return found


def service_pid(lab: Lab, host: str, service: str) -> int:
    path = lab.layout.host(host).home(lab.dir) / "fs" / "run" / "mzk" / f"{service}.pid"
    return int(path.read_text().strip())


def kill_service(lab: Lab, host: str, service: str) -> None:
    """SIGKILL a service's process, as a crash would, and wait until its supervisor has
    started a new one."""
    old = service_pid(lab, host, service)
    with contextlib.suppress(ProcessLookupError):
        os.kill(old, signal.SIGKILL)

    def restarted() -> bool:
        try:
            new = service_pid(lab, host, service)
            os.kill(new, 0)
        except (OSError, ValueError):
            return False
        return new != old

    until(restarted, 10)



# --------------------------------------------------------------------------- ssh-tunnel


def test_ssh_tunnels_reach_every_node_and_nothing_else_does(eglab) -> None:  # type: ignore[no-untyped-def]
    lab = eglab
    assert_every_node_reached_through_every_api_server(lab)
    assert_control_plane_cannot_reach_nodes_directly(lab, ssh_allowed=True)
    # The tunnel keys may forward to the node's kubelet and proof ports only.
    keys = on(lab, "node-1", "cat /root/.ssh/authorized_keys").stdout
    tunnel = [line for line in keys.splitlines() if "mzk-egress-tunnel@" in line]
    assert len(tunnel) == 3
    for line in tunnel:
        options = set(line.split(" ")[0].split(","))
        assert {o for o in options if o.startswith("permitopen=")} == {
            'permitopen="10.213.1.20:8080"', 'permitopen="10.213.1.20:10250"'}, line
        assert {"restrict", 'command="/bin/false"'} <= options, line


def test_a_node_serving_a_certificate_of_another_ca_is_refused(eglab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lab = eglab
    node = lab.inventory.host("node-2")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node.name}")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(node.name), x509.IPAddress(ipaddress.ip_address(node.address))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    home = lab.layout.host(node.name).home(lab.dir) / "fs" / "var" / "lib" / "kubelet"
    (home / "impostor.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (home / "impostor.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    impostor = Impostor(lab, node.name)
    try:
        impostor.start("/var/lib/kubelet/impostor.crt", "/var/lib/kubelet/impostor.key")
        for via in CPS:
            answer = node_proxy(lab, via, node.name)
            assert answer.startswith("ERROR") and "certificate" in answer, answer
        assert node_proxy(lab, "cp-a", "node-1") == "node-1"
    finally:
        impostor.stop()
    apply(lab, lab.inventory)  # the real kubelet again
    assert node_proxy(lab, "cp-a", node.name) == node.name


def test_a_killed_tunnel_service_fails_only_its_api_server_and_comes_back(eglab) -> None:  # type: ignore[no-untyped-def]
    lab = eglab
    kill_service(lab, "cp-a", hostconfig.TUNNEL)
    for via in ("cp-b", "cp-c"):
        for node in lab.inventory.nodes:
            assert node_proxy(lab, via, node.name) == node.name
    took = until(lambda: node_proxy(lab, "cp-a", "node-3") == "node-3",
                 RECOVERY_BOUND_S)
    assert took < RECOVERY_BOUND_S
    assert not apply(lab, lab.inventory).changed


def test_a_node_whose_host_key_changed_is_refused_and_named_by_check(eglab) -> None:  # type: ignore[no-untyped-def]
    lab = eglab
    sshd_dir = lab.layout.host("node-2").home(lab.dir) / "sshd"
    key = sshd_dir / "ssh_host_ed25519_key"
    saved = {p: p.read_bytes() for p in (key, key.with_suffix(".pub"))}
    try:
        for p in saved:
            p.unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        build.restart_sshd(lab.dir, "node-2")
        for cp in CPS:  # the tunnels' next connection to node-2 meets the new key
            kill_service(lab, cp, hostconfig.TUNNEL)
        until(lambda: "code 503" in node_proxy(lab, "cp-b", "node-2"), RECOVERY_BOUND_S)
        for via in CPS:
            assert node_proxy(lab, via, "node-1") == "node-1"
        lines = check_lines(lab)
        for cp in CPS:
            assert ("UNREACHABLE node-2: host key of node-2 (10.213.2.20:22) does not match "
                    "the pinned key") in lines[cp], lines[cp]
            assert "reaches 2/3 nodes" in lines[cp]
    finally:
        for p, content in saved.items():
            p.write_bytes(content)
        build.restart_sshd(lab.dir, "node-2")
        for cp in CPS:
            kill_service(lab, cp, hostconfig.TUNNEL)
    until(lambda: all(node_proxy(lab, via, "node-2") == "node-2" for via in CPS),
          RECOVERY_BOUND_S)


# --------------------------------------------------------------------------- switching


class Rounds(threading.Thread):
    """Node proxy requests through all three API servers side by side, round after round:
    how many failed in each round."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(daemon=True)
        self.lab, self.halt = lab, threading.Event()
        self.rounds: list[list[str]] = []

    def run(self) -> None:
        while not self.halt.is_set():
            with ThreadPoolExecutor(max_workers=len(CPS)) as pool:
                answers = dict(zip(CPS, pool.map(
                    lambda via: node_proxy(self.lab, via, "node-2"), CPS), strict=True))
            self.rounds.append(sorted(v for v, r in answers.items() if r != "node-2"))

    def stop(self) -> list[list[str]]:
        self.halt.set()
        self.join(timeout=60)
        return self.rounds


def switch(lab: Lab, mode: str) -> list[list[str]]:
    lab.inventory = with_mode(lab.inventory, mode)
    rounds = Rounds(lab)
    rounds.start()
    try:
        apply(lab, lab.inventory)
    finally:
        failed = rounds.stop()
    return failed


def test_switching_to_konnectivity_keeps_two_api_servers_reaching_nodes(eglab) -> None:  # type: ignore[no-untyped-def]
    lab = eglab
    rounds = switch(lab, "konnectivity")
    assert len(rounds) >= 5
    assert all(len(failed) <= 1 for failed in rounds), rounds
    assert_every_node_reached_through_every_api_server(lab)
    assert_control_plane_cannot_reach_nodes_directly(lab, ssh_allowed=False)
    # Each proxy-server holds every agent.
    for cp in CPS:
        assert "egress konnectivity reaches 3/3 nodes" in check_lines(lab)[cp]
    # Nothing of the tunnels is left: keys on nodes and locally, files and services on hosts.
    for node in lab.inventory.nodes:
        assert "mzk-egress-tunnel" not in on(lab, node.name,
                                              "cat /root/.ssh/authorized_keys").stdout
    assert not (lab.dir / "pki" / "local" / "egress-tunnel").exists()
    for cp in CPS:
        fs = lab.layout.host(cp).home(lab.dir) / "fs"
        assert not (fs / "etc" / "mzk" / "egress").exists() or not any(
            (fs / "etc" / "mzk" / "egress").iterdir())
        assert not [c for c in cmdlines(lab, cp) if "mzk-egress-tunnel" in c or c.startswith(
            "ssh ")], cmdlines(lab, cp)
    assert not apply(lab, lab.inventory).changed


def test_a_killed_proxy_server_fails_only_its_api_server_and_comes_back(eglab) -> None:  # type: ignore[no-untyped-def]
    lab = eglab
    kill_service(lab, "cp-b", hostconfig.PROXY_SERVER)
    for via in ("cp-a", "cp-c"):
        for node in lab.inventory.nodes:
            assert node_proxy(lab, via, node.name) == node.name
    took = until(lambda: all(node_proxy(lab, "cp-b", n.name) == n.name
                             for n in lab.inventory.nodes), RECOVERY_BOUND_S)
    assert took < RECOVERY_BOUND_S


def test_switching_back_to_ssh_tunnels_leaves_nothing_of_konnectivity(eglab) -> None:  # type: ignore[no-untyped-def]
    lab = eglab
    rounds = switch(lab, "ssh-tunnel")
    assert all(len(failed) <= 1 for failed in rounds), rounds
    assert_every_node_reached_through_every_api_server(lab)
    assert_control_plane_cannot_reach_nodes_directly(lab, ssh_allowed=True)
    for host in lab.inventory.hosts:
        names = set(netns_commands(lab.layout.host(host.name).netns).values())
        assert not names & {"proxy-server", "proxy-agent"}, (host.name, names)
        fs = lab.layout.host(host.name).home(lab.dir) / "fs"
        assert not list((fs / "etc" / "kubernetes" / "pki").glob("konnectivity/*"))
        assert not (fs / "etc" / "systemd" / "system" / "konnectivity-agent.service").exists()
        assert not (fs / "etc" / "systemd" / "system" / "konnectivity-server.service").exists()
    assert not apply(lab, lab.inventory).changed
