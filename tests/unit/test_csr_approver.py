"""The CSR approver's process: one real `--once` pass against a TLS fake API server that
demands a client certificate (as shipped: the program and its companions, no site-packages),
its flags, its RBAC, and the admission of joined nodes. The rules themselves are in
test_csr_rules.py, the DER reader in test_csr_der.py, the sources in test_instance_identity.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from csr_support import ID7, ID8, NODE7, make_csr, serve, serving_csr  # noqa: F401 - a fixture

from bootstrap.node import csr_approver as approver
from bootstrap.node.instance_identity import LAB_ACCOUNT, Instance

NODE8 = "ip-10-213-1-31.lab.internal"


def ship(directory: Path) -> Path:
    """The program and its companions side by side, as the hosts get them."""
    from bootstrap.steps.node_join import program_files

    directory.mkdir()
    for path, content in program_files().items():
        (directory / Path(path).name).write_bytes(content)
    return directory / "mzk-csr-approver"


# ---- RBAC ----------------------------------------------------------------------------------------

def test_rbac_grants_exactly_what_the_approver_uses() -> None:
    role, binding = approver.rbac_manifests("mzk:csr-approver")
    for manifest in (role, binding):
        kubernetes_validate.validate(manifest, "1.33", strict=True)
        assert manifest["metadata"]["name"] == "mzk:csr-approver"
    grants = {(r["apiGroups"][0], r["resources"][0], tuple(r.get("resourceNames", ())),
               tuple(r["verbs"])) for r in role["rules"]}
    assert grants == {
        ("certificates.k8s.io", "certificatesigningrequests", (), ("get", "list", "watch")),
        ("certificates.k8s.io", "certificatesigningrequests/approval", (), ("update",)),
        ("certificates.k8s.io", "signers", approver.SIGNERS, ("approve",)),
        ("", "nodes", (), ("get", "list", "patch")),
        ("coordination.k8s.io", "leases", (), ("get",))}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "mzk:csr-approver"}]


# ---- one real pass against a TLS fake API server ------------------------------------------

def issue(name: str, ca: tuple[Any, x509.Certificate] | None, path: Path,
          ip: str | None = None) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
               .issuer_name(ca[1].subject if ca else subject)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip))]), False)
    cert = builder.sign(ca[0] if ca else key, hashes.SHA256())
    (path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return key, cert


class FakeApi(BaseHTTPRequestHandler):
    """Lists `csrs`, knows node-8 only, records every approval PUT; `list_status` and
    `conflicts` (how many PUTs to refuse with 409) make it misbehave."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the approver expects
    csrs: list[dict[str, Any]] = []
    puts: list[tuple[str, dict[str, Any]]] = []
    clients: list[tuple[Any, str]] = []
    list_status = 200
    conflicts = 0
    nodes: list[dict[str, Any]] = []
    leases: dict[str, str] = {}
    patches: list[tuple[str, str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802
        subject = dict(x[0] for x in self.connection.getpeercert()["subject"])  # type: ignore
        self.clients.append((self.client_address, subject["commonName"]))
        if self.path == approver.CSR_PATH:
            return self._reply(self.list_status, {"kind": "CertificateSigningRequestList",
                                                  "items": self.csrs})
        if self.path == "/api/v1/nodes":
            return self._reply(200, {"kind": "NodeList", "items": self.nodes})
        lease = self.path.rsplit("/", 1)[1]
        if "/leases/" in self.path and lease in self.leases:
            return self._reply(200, {"kind": "Lease",
                                     "spec": {"renewTime": self.leases[lease]}})
        self._reply(200 if self.path == "/api/v1/nodes/node-8" else 404, {"kind": "Status"})

    def do_PATCH(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.patches.append((self.path, self.headers["Content-Type"], body))
        self._reply(200, {"kind": "Node"})

    def do_PUT(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.clients.append((self.client_address, ""))
        if FakeApi.conflicts:
            FakeApi.conflicts -= 1
            return self._reply(409, {"kind": "Status", "reason": "Conflict"})
        self.puts.append((self.path, body))
        self._reply(200, body)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def api(tmp_path: Path, serve: Any) -> Iterator[list[str]]:  # noqa: F811
    """A fake API server demanding a client certificate of our CA; yields the approver's
    flags. The lab record lists node-7 and node-8 running in lab-a."""
    ca = issue("ca", None, tmp_path)
    issue("apiserver", ca, tmp_path, ip="127.0.0.1")
    issue("csr-approver", ca, tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "apiserver.crt", tmp_path / "apiserver.key")
    context.load_verify_locations(tmp_path / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    FakeApi.csrs = [
        make_csr(name="csr-honest", cn="system:node:node-7"),
        make_csr(name="csr-second", cn="system:node:node-7",  # the same instance again
                 created="2026-12-06T10:00:09Z"),
        make_csr(name="csr-impostor", cn="system:node:node-7", user=f"mzk:instance:{ID8}"),
        make_csr(name="csr-other-signer", signer="kubernetes.io/kube-apiserver-client",
                 cn="someone", orgs=()),
        serving_csr(name="csr-done", conditions=({"type": "Approved", "status": "True"},)),
    ]
    FakeApi.puts, FakeApi.clients, FakeApi.list_status, FakeApi.conflicts = [], [], 200, 0
    FakeApi.nodes, FakeApi.leases, FakeApi.patches = [], {}, []
    server = serve(FakeApi, context)
    record = {"instances": [{"instance_id": i, "name": n, "pool": "lab-a", "state": "running",
                             "addresses": [a], "dns_names": [n], "account": LAB_ACCOUNT}
                            for i, n, a in ((ID7, "node-7", "10.213.1.30"),
                                            (ID8, "node-8", "10.213.1.31"))]}
    (tmp_path / "lab.json").write_text(json.dumps(record))
    yield ["--server", f"https://127.0.0.1:{server.server_address[1]}",
           "--ca", str(tmp_path / "ca.crt"), "--cert", str(tmp_path / "csr-approver.crt"),
           "--key", str(tmp_path / "csr-approver.key"),
           "--identity", f"lab:{tmp_path / 'lab.json'}", "--status", str(tmp_path / "status.json"),
           "--once"]


def test_one_pass_approves_the_honest_denies_the_impostor_and_leaves_the_rest(
        api: list[str], tmp_path: Path) -> None:
    # As the csr-approver step ships it (the program and its identity sources side by
    # side), run with no site-packages at all, as on a host with only python3.
    program = ship(tmp_path / "bin")
    done = subprocess.run([sys.executable, "-S", "-E", "-s", str(program), *api],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    puts = dict(FakeApi.puts)
    base = approver.CSR_PATH
    assert set(puts) == {f"{base}/{n}/approval" for n in ("csr-honest", "csr-impostor",
                                                          "csr-second")}
    honest, impostor = puts[f"{base}/csr-honest/approval"], puts[f"{base}/csr-impostor/approval"]
    assert honest["metadata"]["resourceVersion"] == "41"
    assert honest["kind"] == "CertificateSigningRequest"
    (approved,) = honest["status"]["conditions"]
    assert approved["lastUpdateTime"].endswith("Z")
    assert {k: approved[k] for k in ("type", "status", "reason")} == {
        "type": "Approved", "status": "True", "reason": "MzkIdentityVerified"}
    sibling = f"instance {ID8} is named 'node-8' (its private DNS name), not 'node-7'"
    (denied,) = impostor["status"]["conditions"]
    assert (denied["type"], denied["reason"], denied["message"]) == (
        "Denied", "MzkIdentityNotVerified", sibling)
    second = f"a client certificate for instance {ID7} was already approved (csr-honest) " \
        "and has not expired"
    assert puts[f"{base}/csr-second/approval"]["status"]["conditions"][0]["message"] == second
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        "csr=csr-honest decision=approved node=node-7 "
        f"signer=kubernetes.io/kube-apiserver-client-kubelet requester=mzk:instance:{ID7}")
    assert lines[1].endswith(f"reason={json.dumps(sibling)}")
    assert lines[2].endswith(f"reason={json.dumps(second)}")
    assert len(lines) == 3
    assert {cn for _, cn in FakeApi.clients if cn} == {"csr-approver"}
    assert len({address for address, _ in FakeApi.clients}) == 1  # one kept-alive connection
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["counts"]["approved"] == 1 and status["counts"]["denied"] == 2
    assert [d["csr"] for d in status["last_decisions"]] == ["csr-honest", "csr-impostor",
                                                            "csr-second"]


def test_a_restarted_approver_remembers_an_approved_certificate(api: list[str]) -> None:
    """The second request arrives after the first was approved by another (or an earlier)
    approver: the API's list is the memory."""
    FakeApi.csrs = [make_csr(name="csr-first", cn="system:node:node-7",
                             conditions=({"type": "Approved", "status": "True"},)),
                    make_csr(name="csr-again", cn="system:node:node-7")]
    assert approver.main(api) == 0
    ((path, body),) = FakeApi.puts
    assert path.endswith("/csr-again/approval")
    assert body["status"]["conditions"][-1]["type"] == "Denied"


def test_a_conflict_is_retried_on_the_next_pass(api: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    FakeApi.csrs = FakeApi.csrs[:1]
    FakeApi.conflicts = 1  # another approver wrote first, say
    assert approver.main(api) == 0
    first = capsys.readouterr()
    assert FakeApi.puts == [] and first.out == "" and first.err == ""  # not an error either
    assert json.loads(Path(api[api.index("--status") + 1]).read_text())["counts"]["conflicts"] == 1
    assert approver.main(api) == 0
    assert [path.split("/")[-2] for path, _ in FakeApi.puts] == ["csr-honest"]
    assert "decision=approved" in capsys.readouterr().out


def test_api_errors_are_reported_not_raised(api: list[str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    FakeApi.list_status = 500
    assert approver.main(api) == 1
    err = capsys.readouterr().err
    assert "pass failed" in err and "HTTP 500" in err and len(err.splitlines()) == 1
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["counts"]["errors"] == 1 and "HTTP 500" in status["last_error"]
    unreachable = [*api]
    unreachable[1] = "https://127.0.0.1:9"
    assert approver.main(unreachable) == 1
    assert "pass failed" in capsys.readouterr().err


def test_bad_flags_exit_2_with_one_line(api: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    bad = [*api]
    bad[bad.index("--identity") + 1] = "gce:somewhere"
    assert approver.main(bad) == 2
    assert capsys.readouterr().err.strip() == (
        "mzk-csr-approver: --identity 'gce:somewhere' must be lab:PATH or ec2:REGION:CLUSTER")


# --------------------------------------------------------------------------- joined nodes


def joined_node(name: str, address: str, ready: str = "True",
                taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": "41"},
            "spec": {"taints": taints if taints is not None else [
                {"key": approver.CHECKS_TAINT, "effect": "NoSchedule"},
                {"key": "example.com/keep", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": ready}],
                       "addresses": [{"type": "InternalIP", "address": address}]}}


def test_node_problems_from_the_control_plane_view() -> None:
    instance = Instance("auto-a1", "pool-a", "running", ("10.213.1.100",))
    now = 1_000_000.0
    assert approver.node_problems(joined_node("auto-a1", "10.213.1.100"), instance,
                                  now - 5, now) == ""
    assert "not Ready" in approver.node_problems(
        joined_node("auto-a1", "10.213.1.100", ready="False"), instance, now - 5, now)
    assert "is not the instance's" in approver.node_problems(
        joined_node("auto-a1", "10.213.2.7"), instance, now - 5, now)
    assert "clock off" in approver.node_problems(
        joined_node("auto-a1", "10.213.1.100"), instance, now + 30, now)  # node ahead
    assert "clock off" in approver.node_problems(
        joined_node("auto-a1", "10.213.1.100"), instance, now - 300, now)  # behind/stale
    assert "no lease" in approver.node_problems(
        joined_node("auto-a1", "10.213.1.100"), instance, None, now)


def test_a_pass_lifts_the_taint_of_a_joined_node_that_passes_and_no_other(
        api: list[str], tmp_path: Path) -> None:
    # The record (see `api`) lists node-7 (10.213.1.30) and node-8 (10.213.1.31).
    fresh = approver.now_rfc3339()
    FakeApi.csrs = []
    FakeApi.nodes = [joined_node("node-7", "10.213.1.30"),       # passes
                     joined_node("node-8", "10.213.2.55"),       # wrong address
                     joined_node("node-1", "10.213.1.20")]       # inventory node
    FakeApi.leases = {"node-7": fresh, "node-8": fresh, "node-1": fresh}
    assert approver.main(api) == 0
    assert [p[0] for p in FakeApi.patches] == ["/api/v1/nodes/node-7"]
    _, content_type, patch = FakeApi.patches[0]
    assert content_type == "application/json-patch+json"
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "41"}
    assert patch[1]["value"] == [{"key": "example.com/keep", "effect": "NoSchedule"}]


def test_the_taint_is_the_one_kubelets_register_with() -> None:
    from bootstrap.node import kubelet_config
    assert approver.CHECKS_TAINT == kubelet_config.CHECKS_TAINT



def test_webhook_flags_are_checked_in_one_line(api: list[str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    trust = tmp_path / "trust.pem"
    trust.write_text("not a pem")
    cases = [
        (["--webhook-listen", "127.0.0.1:10262"],
         "--webhook-listen needs --identity-trust PATH"),
        (["--webhook-listen", "0.0.0.0:10262", "--identity-trust", str(trust)],
         "--webhook-listen '0.0.0.0:10262' must be a loopback HOST:PORT"),
        (["--webhook-listen", "127.0.0.1:10262", "--identity-trust", str(trust)],
         f"--identity-trust {trust}: no CERTIFICATE or PUBLIC KEY block"),
    ]
    for flags, message in cases:
        assert approver.main([*api, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mzk-csr-approver: {message}") and len(err.splitlines()) == 1
