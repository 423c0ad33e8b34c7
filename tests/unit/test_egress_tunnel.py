"""The ssh-tunnel egress service against real OpenSSH: sshd on 127.0.0.x, a stand-in HTTP
server as the kubelet, the service as a subprocess, the API server played by the test.

Policies checked: a tunnel reaches only a node's own address on its allowed ports (the
service refuses the rest, and sshd refuses it too through the rendered authorized_keys
line); one SSH connection per node however many tunnels; a node with a host key other than
the pinned one gets no tunnel and is named; a master that dies comes back; SIGTERM leaves
nothing behind. The real-SSH tests need root (sshd) and are skipped without it; the pure
ones (rendering, parsing) run anywhere.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bootstrap.egress import (
    tunnel_access,
    tunnel_config,
    tunnel_masters,
    tunnel_proxy,
    tunnel_service,
)
from bootstrap.steps import egress as egress_step

SERVICE = Path(tunnel_service.__file__)
# The hosts run it with their system python3; MZK_TUNNEL_PYTHON=python3.9 tries the oldest.
PYTHON = os.environ.get("MZK_TUNNEL_PYTHON", sys.executable)
SSHD = "/usr/sbin/sshd"

needs_sshd = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SSHD) or shutil.which("ssh") is None,
    reason="needs root, /usr/sbin/sshd and ssh (real OpenSSH on loopback addresses)")


# ----------------------------------------------------------------------------- helpers


def ship(directory: Path) -> Path:
    """The service and its companions side by side, as the egress step writes them to a
    control-plane host; the program's path."""
    directory.mkdir(parents=True)
    for path, content in egress_step.TUNNEL_PROGRAM_FILES.items():
        (directory / Path(path).name).write_bytes(content)
    return directory / Path(egress_step.TUNNEL_PROGRAM).name


def wait_for(what: str, check: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair; returns the public line `type base64 comment`."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text(
    ).rsplit(")", 1)[1].split()[0]


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """By PID: the signal, then SIGKILL if it lingers; its children (sshd sessions) too."""
    if proc.poll() is None:
        kids = children_of(proc.pid)
        proc.send_signal(sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)


class StandIn(http.server.ThreadingHTTPServer):
    """The kubelet's stand-in: answers every GET with who it is."""

    daemon_threads = True

    def __init__(self, address: str, port: int) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes

            def do_GET(self) -> None:
                body = f"stand-in {address}:{port} {self.path}".encode()
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.requests = 0
        super().__init__((address, port), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class SSHNode:
    """A node: an sshd on its own loopback address with its own host key and
    authorized_keys, and stand-ins on an allowed and a forbidden port."""

    name: str
    address: str
    root: Path
    ssh_port: int = 0
    web_port: int = 0
    other_port: int = 0
    host_key: str = ""
    proc: subprocess.Popen[bytes] | None = None
    servers: list[StandIn] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    def prepare(self, tunnel_public: str) -> None:
        self.root.mkdir()
        self.ssh_port, self.web_port = free_port(self.address), free_port(self.address)
        self.other_port = free_port(self.address)
        self.host_key = keygen(self.root / "host_ed25519", f"host {self.name}")
        line = tunnel_access.authorized_keys_line(tunnel_public, self.address,
                                                  [self.web_port], f"mzk-tunnel {self.name}")
        (self.root / "authorized_keys").write_text(line + "\n")
        (self.root / "sshd_config").write_text(
            f"ListenAddress {self.address}:{self.ssh_port}\n"
            f"HostKey {self.root / 'host_ed25519'}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            "UsePAM no\nStrictModes no\nPidFile none\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "LogLevel INFO\n")
        self.servers = [StandIn(self.address, self.web_port),
                        StandIn(self.address, self.other_port)]

    def start(self) -> None:
        os.makedirs("/run/sshd", exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd for {self.name} exited: {self.log.read_text()}")
            with socket.socket() as s:
                return s.connect_ex((self.address, self.ssh_port)) == 0

        wait_for(f"sshd of {self.name}", listening)

    def accepted(self) -> int:
        """SSH logins sshd accepted: one per master connection."""
        return self.log.read_text().count("Accepted publickey")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        for server in self.servers:
            server.stop()


class Service:
    """The tunnel service as a subprocess, as the API server's host runs it."""

    def __init__(self, root: Path, nodes: list[SSHNode], identity: Path,
                 pinned: dict[str, str]) -> None:
        root.mkdir()
        self.root = root
        self.socket = root / "run" / "tunnel.sock"
        self.status = root / "run" / "status.json"
        known = root / "known_hosts"
        known.write_bytes(tunnel_access.known_hosts(
            (n.address, n.ssh_port, pinned.get(n.name, n.host_key)) for n in nodes))
        self.config = root / "tunnel.json"
        self.config.write_bytes(tunnel_access.service_config(
            [tunnel_access.TunnelNode(n.name, n.address, n.ssh_port, [n.web_port])
             for n in nodes],
            user="root", connect_timeout=3, socket=str(self.socket), status=str(self.status),
            identity=str(identity), known_hosts_file=str(known),
            control_dir=str(root / "run" / "ctl")))
        self.log = root / "service.log"
        self.program = ship(root / "bin")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([PYTHON, "-S", str(self.program), "--config",
                                          str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def lines(self, *words: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines()
                if all(w in line for w in words)]

    def state(self) -> dict[str, dict[str, object]]:
        try:
            return dict(json.loads(self.status.read_text()))
        except (OSError, ValueError):
            return {}

    def wait_state(self, node: str, state: str, timeout: float = 10.0) -> dict[str, object]:
        return wait_for(f"{node} {state}",  # type: ignore[return-value]
                        lambda: self.state().get(node, {}).get("state") == state
                        and self.state()[node], timeout)

    def masters(self) -> dict[str, int]:
        """Node address -> pid of each ssh master the service runs."""
        found = {}
        for pid in children_of(self.proc.pid):
            args = cmdline(pid)
            if "-N" in args and "-S" in args:
                found[args[-1]] = pid
        return found

    def stop(self) -> None:
        masters = list(self.masters().values())
        stop_process(self.proc)
        for pid in masters:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def connect(socket_path: Path, dest: str) -> tuple[int, bytes, socket.socket]:
    """CONNECT as the API server does; (status code, response head, the socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(socket_path))
    s.sendall(f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\nUser-Agent: test\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: nothing of the tunnel is taken here
        if not chunk:
            break
        head += chunk
    code = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return code, head, s


def get(s: socket.socket, path: str = "/", times: int = 1) -> list[str]:
    """HTTP GETs over one tunnel (keep-alive); the bodies."""
    conn = http.client.HTTPConnection("node")
    conn.sock = s
    bodies = []
    for _ in range(times):
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        bodies.append(response.read().decode())
    conn.close()
    return bodies


def tunnel_get(service: Service, node: SSHNode, path: str = "/") -> str:
    code, head, s = connect(service.socket, f"{node.address}:{node.web_port}")
    with s:
        assert code == 200, head
        return get(s, path)[0]


# ----------------------------------------------------------------------------- the lab


@dataclass
class Lab:
    root: Path
    identity: Path
    nodes: dict[str, SSHNode]
    service: Service


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0 or not os.path.exists(SSHD):
        pytest.skip("needs root and /usr/sbin/sshd")
    # Short: control socket paths are limited to about 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="mzk-eg-"))
    nodes: dict[str, SSHNode] = {}
    service = None
    try:
        identity = root / "tunnel_key"
        public = keygen(identity, "mzk-tunnel cp-a")
        for i, name in enumerate(("node-1", "node-2", "node-3"), start=2):
            nodes[name] = SSHNode(name, f"127.0.0.{i}", root / name)
            nodes[name].prepare(public)
            nodes[name].start()
        # node-3 presents a host key other than the one pinned for it.
        impostor = keygen(root / "impostor", "impostor")
        service = Service(root / "svc", list(nodes.values()), identity, {"node-3": impostor})
        service.wait_state("node-1", "up")
        service.wait_state("node-2", "up")
        wait_for("node-3 refused", lambda: "pinned" in str(service.state()["node-3"]["reason"]))
        yield Lab(root, identity, nodes, service)
    finally:
        if service is not None:
            service.stop()
        for node in nodes.values():
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def ssh_direct(lab: Lab, node: SSHNode, *options: str,
               command: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """ssh with the tunnel key straight to a node (no service), host key pinned."""
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(lab.identity), "-o", "IdentitiesOnly=yes",
         "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={lab.service.root / 'known_hosts'}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
         "-p", str(node.ssh_port), "-l", "root", *options, "--", node.address, *command],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)


# ----------------------------------------------------------------------------- real OpenSSH


@needs_sshd
def test_tunnels_carry_http_and_share_one_ssh_connection_per_node(lab: Lab) -> None:
    node = lab.nodes["node-1"]
    logins_before = node.accepted()
    masters_before = lab.service.masters()
    opened_before = len(lab.service.lines("event=tunnel", "node=node-1", "outcome=open"))

    sequential = [tunnel_get(lab.service, node, f"/seq/{i}") for i in range(15)]
    with ThreadPoolExecutor(max_workers=15) as pool:
        concurrent = list(pool.map(lambda i: tunnel_get(lab.service, node, f"/par/{i}"),
                                   range(30)))
    code, _, s = connect(lab.service.socket, f"{node.address}:{node.web_port}")
    with s:
        reused = get(s, "/keep", times=5)  # one tunnel, several requests

    prefix = f"stand-in {node.address}:{node.web_port}"
    assert sequential == [f"{prefix} /seq/{i}" for i in range(15)]
    assert concurrent == [f"{prefix} /par/{i}" for i in range(30)]
    assert code == 200 and reused == [f"{prefix} /keep"] * 5
    # 46 tunnels, no new SSH login, the same master process, no per-tunnel ssh process.
    assert node.accepted() == logins_before == 1
    assert lab.service.masters()[node.address] == masters_before[node.address]
    ssh_children = [a for a in map(cmdline, children_of(lab.service.proc.pid)) if a[:1] == ["ssh"]]
    assert all("-N" in a and "-S" in a for a in ssh_children)  # masters only, none per tunnel
    assert [a[-1] for a in ssh_children].count(node.address) == 1
    opened = lab.service.lines("event=tunnel", "node=node-1", "outcome=open", "code=200")
    assert len(opened) - opened_before == 46
    assert f"dest={node.address}:{node.web_port}" in opened[-1]


@needs_sshd
def test_other_nodes_tunnels_go_to_their_own_node(lab: Lab) -> None:
    node = lab.nodes["node-2"]
    assert tunnel_get(lab.service, node) == f"stand-in {node.address}:{node.web_port} /"


@needs_sshd
def test_a_port_not_allowed_is_refused_with_403_and_logged(lab: Lab) -> None:
    node = lab.nodes["node-1"]
    before = node.servers[1].requests
    code, head, s = connect(lab.service.socket, f"{node.address}:{node.other_port}")
    s.close()
    assert code == 403, head
    assert node.servers[1].requests == before
    refused = lab.service.lines("event=tunnel", "node=node-1", "outcome=refused", "code=403",
                                f"dest={node.address}:{node.other_port}")
    assert len(refused) == 1 and "not allowed for node-1" in refused[0]


@needs_sshd
def test_an_address_that_is_no_node_is_refused_with_403(lab: Lab) -> None:
    code, head, s = connect(lab.service.socket, "127.0.0.1:22")
    s.close()
    assert code == 403, head
    refused = lab.service.lines("event=tunnel", "dest=127.0.0.1:22", "code=403")
    assert len(refused) == 1 and "node=-" in refused[0] and "not a node address" in refused[0]


@needs_sshd
def test_not_connect_is_405_and_garbage_is_400(lab: Lab) -> None:
    for request, expected in ((b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
                              (b"CONNECT nonsense HTTP/1.1\r\n\r\n", 400)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(lab.service.socket))
            s.sendall(request)
            assert s.recv(100).startswith(f"HTTP/1.1 {expected} ".encode())


@needs_sshd
def test_sshd_itself_confines_the_tunnel_key_to_the_allowed_ports(lab: Lab) -> None:
    """The rendered authorized_keys line, not the service, is what stops a stolen key."""
    node = lab.nodes["node-2"]
    other = ssh_direct(lab, node, "-W", f"{node.address}:{node.other_port}")
    assert other.returncode != 0
    assert "administratively prohibited" in other.stderr
    elsewhere = ssh_direct(lab, node, "-W", f"127.0.0.1:{node.ssh_port}")
    assert "administratively prohibited" in elsewhere.stderr

    command = ssh_direct(lab, node, command=("echo", "shell-reached", ";", "id"))
    assert command.returncode == 1  # the forced /bin/false ran instead
    assert "shell-reached" not in command.stdout and "uid=" not in command.stdout

    # Remote forwarding: only the pinned privileged port may be asked for (which a non-root
    # login cannot bind; these tests log in as root, so that one is not tried here).
    for listen in (f"127.0.0.1:{free_port('127.0.0.1')}", f"{node.address}:0"):
        remote = ssh_direct(lab, node, "-N", "-o", "ExitOnForwardFailure=yes",
                            "-R", f"{listen}:127.0.0.1:22")
        assert remote.returncode != 0 and "forwarding failed" in remote.stderr

    allowed = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(lab.identity), "-o", "IdentitiesOnly=yes",
         "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={lab.service.root / 'known_hosts'}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-p", str(node.ssh_port), "-l", "root",
         "-W", f"{node.address}:{node.web_port}", node.address],
        input=b"GET /direct HTTP/1.0\r\n\r\n", capture_output=True, timeout=20)
    assert allowed.stdout.endswith(f"stand-in {node.address}:{node.web_port} /direct".encode())


@needs_sshd
def test_a_host_key_other_than_the_pinned_one_gets_503_and_names_the_node(lab: Lab) -> None:
    node = lab.nodes["node-3"]
    code, head, s = connect(lab.service.socket, f"{node.address}:{node.web_port}")
    s.close()
    assert code == 503, head
    assert node.accepted() == 0 and node.servers[0].requests == 0

    refused = lab.service.lines("event=tunnel", "node=node-3", "code=503")[-1]
    assert "host key of node-3" in refused and "does not match the pinned key" in refused
    down = lab.service.lines("event=master", "node=node-3", "state=down")
    assert down and all("does not match the pinned key" in line for line in down)
    status = lab.service.state()["node-3"]
    assert status["state"] == "down" and "host key of node-3" in str(status["reason"])
    assert "does not match the pinned key" in str(status["reason"])
    # The others are unaffected.
    assert lab.service.state()["node-1"]["state"] == "up"
    assert tunnel_get(lab.service, lab.nodes["node-1"]).startswith("stand-in")

    check = subprocess.run([PYTHON, "-S", str(lab.service.program), "--config",
                            str(lab.service.config), "--check"],
                           capture_output=True, text=True, timeout=10)
    assert check.returncode == 1
    assert "node-1: tunnel up" in check.stdout
    assert "node-3: tunnel down" in check.stdout and "pinned key" in check.stdout


@needs_sshd
def test_a_killed_master_comes_back_and_tunnels_work_again(lab: Lab) -> None:
    node = lab.nodes["node-2"]
    logins = node.accepted()
    old = lab.service.masters()[node.address]
    downs = len(lab.service.lines("event=master", "node=node-2", "state=down"))
    os.kill(old, signal.SIGKILL)

    def works() -> bool:
        code, _, s = connect(lab.service.socket, f"{node.address}:{node.web_port}")
        with s:
            return code == 200 and get(s)[0].startswith("stand-in")

    began = time.monotonic()
    wait_for("a tunnel to node-2 again", works, timeout=10)
    assert time.monotonic() - began < 10
    assert lab.service.masters()[node.address] != old
    assert node.accepted() == logins + 1
    down = lab.service.lines("event=master", "node=node-2", "state=down")
    assert len(down) == downs + 1 and "signal 9" in down[-1]
    assert lab.service.state()["node-2"]["state"] == "up"


@needs_sshd
def test_sigterm_stops_masters_and_removes_the_socket(lab: Lab) -> None:
    node = lab.nodes["node-1"]
    service = Service(lab.root / "svc-term", [node], lab.identity, {})
    try:
        service.wait_state("node-1", "up")
        master = service.masters()[node.address]
        ctl = service.root / "run" / "ctl" / "0"
        assert ctl.exists()
        assert oct(service.socket.stat().st_mode & 0o777) == "0o600"
        assert oct((service.root / "run").stat().st_mode & 0o777) == "0o700"
        assert tunnel_get(service, node).startswith("stand-in")

        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(10) == 0
        assert not service.socket.exists() and not ctl.exists()
        wait_for("the master to end", lambda: not alive(master), timeout=5)
        assert service.state()["node-1"]["state"] == "down"
        assert service.state()["node-1"]["reason"] == "service stopped"
    finally:
        service.stop()


# ----------------------------------------------------------------------------- pure parts

TUNNEL_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfake+key/for+tests0000000000000000000 x@y"


def test_authorized_keys_line_permits_only_forwarding_to_the_nodes_own_ports() -> None:
    line = tunnel_access.authorized_keys_line(TUNNEL_KEY, "10.0.1.20", [10250, 8080, 10250],
                                              "mzk-tunnel cp-a")
    assert line == ('restrict,port-forwarding,permitopen="10.0.1.20:8080",'
                    'permitopen="10.0.1.20:10250",permitlisten="127.0.0.1:1",command="/bin/false" '
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfake+key/for+tests0000000000000000000"
                    " mzk-tunnel cp-a")
    v6 = tunnel_access.authorized_keys_line(TUNNEL_KEY, "fd00::5", [10250], "c")
    assert 'permitopen="[fd00::5]:10250"' in v6


@pytest.mark.parametrize("bad", [
    dict(public_key=TUNNEL_KEY + "\nssh-ed25519 AAAA evil"),
    dict(comment="cp-a\nssh-ed25519 AAAA evil"),
    dict(address='10.0.0.1",permitopen="*:*'),
    dict(ports=[]),
])
def test_authorized_keys_line_never_yields_a_second_line_or_a_broken_option(
        bad: dict[str, object]) -> None:
    args: dict[str, object] = dict(public_key=TUNNEL_KEY, address="10.0.0.1", ports=[10250],
                                   comment="mzk-tunnel cp-a")
    args.update(bad)
    with pytest.raises(ValueError):
        tunnel_access.authorized_keys_line(**args)  # type: ignore[arg-type]


def test_known_hosts_names_hosts_as_ssh_looks_them_up() -> None:
    text = tunnel_access.known_hosts([("10.0.1.20", 22, "ssh-ed25519 AAAAone"),
                                      ("10.0.1.21", 2222, "ssh-ed25519 AAAAtwo comment")])
    assert text == b"10.0.1.20 ssh-ed25519 AAAAone\n[10.0.1.21]:2222 ssh-ed25519 AAAAtwo\n"
    with pytest.raises(ValueError):
        tunnel_access.known_hosts([("10.0.1.20", 22, "ssh-ed25519 AAAA\n* ssh-ed25519 B")])


def test_service_config_is_what_the_service_reads() -> None:
    raw = tunnel_access.service_config(
        [tunnel_access.TunnelNode("node-1", "10.0.1.20", 22, [10250, 8080])], user="root")
    config = tunnel_config.parse_config(json.loads(raw), "test")
    assert config.nodes == (tunnel_config.Node("node-1", "10.0.1.20", 22, (8080, 10250)),)
    assert config.socket == tunnel_access.SOCKET and config.status == tunnel_access.STATUS
    assert config.control_dir == tunnel_access.CONTROL_DIR and config.connect_timeout == 5


@pytest.mark.parametrize("change, message", [
    (lambda c: c["nodes"][0].update(ports=[0]), "not a TCP port"),
    (lambda c: c["nodes"].append(dict(c["nodes"][0], name="x")), "two nodes have the address"),
    (lambda c: c.update(control_dir="/run/" + "d" * 100), "too long for a socket path"),
    (lambda c: c.pop("user"), "`user` is missing"),
])
def test_bad_service_config_names_the_setting(change: Callable[[dict], None],
                                              message: str) -> None:
    config = json.loads(tunnel_access.service_config(
        [tunnel_access.TunnelNode("node-1", "10.0.1.20", 22, [10250])], user="root"))
    change(config)
    with pytest.raises(tunnel_config.ConfigError, match=message):
        tunnel_config.parse_config(config, "tunnel.json")


def test_the_request_head_is_taken_off_the_socket_and_nothing_after_it() -> None:
    import asyncio

    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.sendall(b"CONNECT 10.0.1.20:10250 HTTP/1.1\r\nHost: 10.0.1.20:10250\r\n\r\n"
                  b"\x16\x03\x01 first bytes of the tunnel")
        # A loop of its own: asyncio.run would leave the thread without a current loop,
        # which the Pulumi mocks of later tests expect to find.
        loop = asyncio.new_event_loop()
        try:
            head = loop.run_until_complete(tunnel_proxy.read_request_head(a))
        finally:
            loop.close()
        assert head.endswith(b"10250\r\n\r\n")
        assert a.recv(100) == b"\x16\x03\x01 first bytes of the tunnel"
    assert tunnel_proxy.parse_connect(head) == ("CONNECT", "10.0.1.20", 10250)
    assert tunnel_proxy.parse_connect(b"CONNECT [fd00::5]:10250 HTTP/1.1\r\n\r\n") == (
        "CONNECT", "fd00::5", 10250)
    for bad in (b"CONNECT 10.0.1.20 HTTP/1.1\r\n\r\n", b"CONNECT a:99999 HTTP/1.1\r\n\r\n",
                b"hello\r\n\r\n"):
        with pytest.raises(ValueError):
            tunnel_proxy.parse_connect(bad)


def test_why_a_master_ended_names_a_host_key_problem_and_the_node() -> None:
    node = tunnel_config.Node("node-7", "10.0.1.27", 22, (10250,))
    changed = ["@@@@@@@@@@@", "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
               "Host key verification failed."]
    assert tunnel_masters.why_master_ended(node, changed, 255) == (
        "host key of node-7 (10.0.1.27:22) does not match the pinned key (known_hosts)")
    assert "not authorized" in tunnel_masters.why_master_ended(
        node, ["root@10.0.1.27: Permission denied (publickey)."], 255)
    assert tunnel_masters.why_master_ended(node, [], -9) == (
        "ssh to node-7 (10.0.1.27:22) ended by signal 9")
    assert tunnel_masters.why_master_ended(
        node, ["ssh: connect to host 10.0.1.27 port 22: Connection refused"], 255).endswith(
        "Connection refused")


def test_the_host_program_is_standard_library_python_3_9() -> None:
    """It is copied to hosts with its companions and run with the system python3: nothing
    else may creep in; each imports the others as shipped beside it (in the project, from
    bootstrap.egress)."""
    companions = set(tunnel_service.COMPANIONS)
    allowed = companions | {f"bootstrap.egress.{name}" for name in companions}
    for source in (SERVICE, *(SERVICE.with_name(f"{name}.py") for name in companions)):
        tree = ast.parse(source.read_text(), feature_version=(3, 9))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module is not None
                imported.add(node.module)
            assert not isinstance(node, ast.Match)
        outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names}
        assert outside <= allowed, (source.name, outside - allowed)


def test_the_shipped_program_runs_from_its_companions_alone(tmp_path: Path) -> None:
    """As the egress step ships it (program and companions in one directory), with no
    bootstrap on the path (`-S`: no site-packages), it runs; without a companion it does
    not."""
    program = ship(tmp_path / "bin")
    missing = tmp_path / "missing.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([PYTHON, "-S", str(program), "--config", str(missing)],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        f"tunnel-service: {missing}: cannot read: No such file or directory")
    (program.parent / "tunnel_mux.py").unlink()
    run = subprocess.run([PYTHON, "-S", str(program), "--config", str(missing)],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    assert run.returncode == 1 and "No module named 'tunnel_mux'" in run.stderr, run.stderr
