"""Nodes that really join, on the real lab: containerd, runc and kubelets in three zones,
pods on them, and the API server's streams to them (logs, exec, port-forward) through the
egress path in both modes while the nodes' firewalls refuse the control plane; auto-scaled
nodes from `lab launch` that join with their signed instance identity alone, and impostors
(a claimed sibling's name, a copied or forged document, a second certificate) that do not.

The tests run in file order on one lab (three control-plane hosts, three nodes, one per
zone), each leaving it converged.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from bootstrap.apply_command import execute
from bootstrap.inventory import Inventory
from bootstrap.lab import build, hosts, imds, launch
from bootstrap.lab import kubectl as lab_kubectl
from bootstrap.node import instance_identity
from bootstrap.node import kubelet_config as kc

from . import workload
from .conftest import (
    KUBECTL,
    Lab,
    apply,
    check_lines,
    in_host,
    kubectl,
    lab_unavailable,
    on,
    require_k8s_binaries,
    running_lab,
    until,
)

ZONES = ("lab-a", "lab-b", "lab-c")


def with_mode(inventory: Inventory, mode: str) -> Inventory:
    return dataclasses.replace(inventory, cluster=dataclasses.replace(
        inventory.cluster, egress=mode))



def get_json(lab: Lab, args: str) -> Any:
    return json.loads(kubectl(lab, "cp-a", f"get {args} -o json").stdout)


def nodes_by_name(lab: Lab) -> dict[str, Any]:
    return {n["metadata"]["name"]: n for n in get_json(lab, "nodes")["items"]}


def ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in node["status"].get("conditions", []))


def kubectl_apply(lab: Lab, *objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    kubectl(lab, "cp-a", "apply -f -", stdin=body.encode())


def pods_of(lab: Lab, namespace: str, app: str) -> list[dict[str, Any]]:
    return get_json(lab, f"pods -n {namespace} -l app={app}")["items"]


def running_pods(lab: Lab, namespace: str, app: str) -> list[dict[str, Any]]:
    return [p for p in pods_of(lab, namespace, app) if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and all(c.get("ready") for c in p["status"].get("containerStatuses", []))]


@pytest.fixture(scope="module")
def nlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.fail(reason)
    require_k8s_binaries()
    with running_lab(tmp_path_factory, "nlab", workers=3) as running:
        # (a first apply's plan cannot list the objects of an API server not yet running)
        execute(running.inventory, running.dir / "pki", dry_run=False)
        for node in running.inventory.nodes:
            workload.import_on(running, node.name)
        yield running


def test_every_node_is_ready_in_its_zone_and_untainted(nlab: Lab) -> None:
    found = nodes_by_name(nlab)
    assert set(found) == {h.name for h in nlab.inventory.nodes}
    for host in nlab.inventory.nodes:
        node = found[host.name]
        labels = node["metadata"]["labels"]
        assert ready(node), node["status"]["conditions"]
        assert labels[kc.ZONE_LABEL] == host.zone
        assert labels[kc.REGION_LABEL] == "lab"
        assert not [t for t in node["spec"].get("taints") or [] if t["key"] == kc.CHECKS_TAINT]
        assert node["status"]["capacity"]["pods"] == "110"
        assert node["spec"]["podCIDR"]
        assert {"type": "InternalIP", "address": host.address} in node["status"]["addresses"]
        # Its kubelet talks to its own zone's endpoint.
        conf = on(nlab, host.name, f"cat {kc.KUBECONFIG}").stdout
        assert f"server: https://api-{host.zone[-1]}.lab.internal:6443" in conf
    lines = check_lines(nlab)
    for host in nlab.inventory.nodes:
        assert lines[host.name].endswith("node checks passed"), lines[host.name]


def test_the_person_at_the_keyboard_runs_kubectl_from_this_machine(nlab: Lab) -> None:
    """`bin/mzk kubectl` (python -m bootstrap lab kubectl): the admin kubeconfig through the
    bastion's network to the regional endpoint, its certificate verified for its name."""
    done = subprocess.run(
        [sys.executable, "-m", "bootstrap", "lab", "kubectl", "--dir", str(nlab.dir),
         "get", "nodes", "-o", "name"], capture_output=True, text=True, timeout=60,
        check=False)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {f"node/{h.name}" for h in nlab.inventory.nodes}
    # The name is checked: another name for the same address is refused.
    argv = lab_kubectl.command(nlab.dir, ["get", "nodes"])
    argv = [a if not a.startswith("--tls-server-name=") else "--tls-server-name=api.other"
            for a in argv]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "certificate" in refused.stderr, refused.stderr


def test_the_zones_storage_classes_are_applied(nlab: Lab) -> None:
    classes = {c["metadata"]["name"]: c for c in get_json(nlab, "storageclass")["items"]}
    assert set(classes) == {"ebs-gp3", *(f"ebs-gp3-{z}" for z in ZONES)}
    for zone in ZONES:
        topology = classes[f"ebs-gp3-{zone}"]["allowedTopologies"]
        assert topology == [{"matchLabelExpressions": [
            {"key": kc.ZONE_LABEL, "values": [zone]}]}]
    default = classes["ebs-gp3"]["metadata"]["annotations"]
    assert default["storageclass.kubernetes.io/is-default-class"] == "true"


def test_the_kubelet_is_hardened(nlab: Lab) -> None:
    node = nlab.inventory.nodes[0]
    # Anonymous requests are refused; the read-only port is closed.
    anonymous = on(nlab, node.name, f"curl -sk -o /dev/null -w '%{{http_code}}' "
                                    f"https://{node.address}:10250/pods").stdout
    assert anonymous == "401"
    assert on(nlab, node.name, f"curl -s -m 2 http://{node.address}:10255/pods",
              check=False).exit_code == 7  # connection refused
    # Its serving certificate is the cluster CA's, for its name and address.
    cert = on(nlab, node.name, f"openssl s_client -connect {node.address}:10250 "
              "-CAfile /etc/kubernetes/pki/ca.crt </dev/null 2>/dev/null | "
              "openssl x509 -noout -issuer -ext subjectAltName", check=False).stdout
    assert "CN = kubernetes-ca" in cert or "CN=kubernetes-ca" in cert, cert
    assert f"IP Address:{node.address}" in cert and f"DNS:{node.name}" in cert, cert
    # A client certificate of the cluster CA without rights is authenticated, then refused
    # by webhook authorization.
    # (the node's own client certificate: a node may not use the kubelet API)
    denied = on(nlab, node.name, "d=$(mktemp -d) && for k in certificate key; do "
                f"sed -n \"s/.*client-$k-data: //p\" {kc.KUBECONFIG} | base64 -d > $d/$k; "
                "done && curl -sk -o /dev/null -w '%{http_code}' --cert $d/certificate "
                f"--key $d/key https://{node.address}:10250/pods; rm -rf $d").stdout
    assert denied == "403"


def test_a_spread_deployment_lands_in_every_zone(nlab: Lab) -> None:
    kubectl_apply(nlab, workload.spread_deployment("web", "default", 6))
    until(lambda: len(running_pods(nlab, "default", "web")) == 6, 90, "6 web pods running")
    zones = {h.name: h.zone for h in nlab.inventory.nodes}
    per_zone = {z: 0 for z in ZONES}
    for pod in running_pods(nlab, "default", "web"):
        per_zone[zones[pod["spec"]["nodeName"]]] += 1
        assert pod["status"]["podIP"].startswith("10.244."), pod["status"]
    assert per_zone == {"lab-a": 2, "lab-b": 2, "lab-c": 2}


def test_a_privileged_pod_is_refused_in_default(nlab: Lab) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": "default"},
           "spec": {"containers": [workload.container(
               "root", "sleep 3600", securityContext={"privileged": True})]}}
    out = kubectl(nlab, "cp-a", "apply -f -", stdin=json.dumps(pod).encode(), check=False)
    assert not out.ok
    assert "violates PodSecurity" in out.stderr and "privileged" in out.stderr, out.stderr


def one_pod_per_zone(lab: Lab) -> dict[str, str]:
    zones = {h.name: h.zone for h in lab.inventory.nodes}
    found: dict[str, str] = {}
    for pod in running_pods(lab, "default", "web"):
        found.setdefault(zones[pod["spec"]["nodeName"]], pod["metadata"]["name"])
    assert set(found) == set(ZONES), found
    return found


@contextlib.contextmanager
def port_forward(lab: Lab, pod: str, local_port: int) -> Iterator[None]:
    pid = json.loads((lab.dir / "lab-state.json").read_text())["pids"]["cp-a"]
    proc = subprocess.Popen(
        ["nsenter", "-t", str(pid), "-n", "-m", KUBECTL(),
         "--kubeconfig=/etc/kubernetes/admin.conf", "-n", "default", "port-forward",
         f"pod/{pod}", f"{local_port}:8080"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert b"Forwarding from" in line, line
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def assert_streams_reach_every_zone(lab: Lab) -> None:
    """logs, exec with stdin and port-forward, to a pod in each zone, via the API server."""
    for zone, pod in one_pod_per_zone(lab).items():
        logs = kubectl(lab, "cp-a", f"-n default logs {pod} --tail=2").stdout
        assert "tick" in logs, (zone, logs)
        echoed = kubectl(lab, "cp-a", f"-n default exec -i {pod} -- /bin/busybox cat",
                         stdin=f"hello {zone}\n".encode()).stdout
        assert echoed == f"hello {zone}\n"
        node = get_json(lab, f"pod -n default {pod}")["spec"]["nodeName"]
        with port_forward(lab, pod, 18080):
            served = in_host(lab, "cp-a", ["curl", "-s", "-m", "5",
                                           "http://127.0.0.1:18080/node"])
        assert served.stdout == f"{node}\n", (zone, served)


def assert_control_plane_cannot_reach_kubelets(lab: Lab) -> None:
    for node in lab.inventory.nodes:
        out = in_host(lab, "cp-b", ["curl", "-sk", "--max-time", "1", "-o", "/dev/null",
                                    f"https://{node.address}:10250/healthz"])
        assert out.returncode == 28, (node.name, out)  # timed out: the firewall drops it


def test_logs_exec_and_port_forward_through_konnectivity(nlab: Lab) -> None:
    assert nlab.inventory.cluster.egress == "konnectivity"
    assert_control_plane_cannot_reach_kubelets(nlab)
    assert_streams_reach_every_zone(nlab)


def test_logs_exec_and_port_forward_through_ssh_tunnels(nlab: Lab) -> None:
    nlab.inventory = with_mode(nlab.inventory, "ssh-tunnel")
    apply(nlab)
    assert_control_plane_cannot_reach_kubelets(nlab)
    assert_streams_reach_every_zone(nlab)



def test_a_failing_node_check_taints_the_node_and_check_names_it(nlab: Lab) -> None:
    node = nlab.inventory.nodes[1]
    shadow = node_home(nlab, node.name) / "sysctl" / "kernel" / "panic"
    shadow.write_text("0\n")  # as if someone reset the kernel value on the node
    lines = check_lines(nlab)
    assert "node checks FAILED: kernel settings: kernel.panic=0 (want 10)" in lines[node.name]
    report = apply(nlab)
    assert any("set kernel values kernel.panic" in line for line in report.lines())
    assert shadow.read_text().strip() == "10"
    assert check_lines(nlab)[node.name].endswith("node checks passed")


def csrs_for(lab: Lab, node: str) -> list[dict[str, Any]]:
    """Certificate requests whose subject is the node (CN system:node:<node>)."""
    found = []
    for csr in get_json(lab, "csr")["items"]:
        pem = base64.b64decode(csr["spec"]["request"])
        request = x509.load_pem_x509_csr(pem)
        names = request.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if names and names[0].value == f"system:node:{node}":
            found.append(csr)
    return found


def condition(csr: dict[str, Any]) -> tuple[str, str, str]:
    found = (csr.get("status") or {}).get("conditions") or [{}]
    c = found[-1]
    return c.get("type", ""), c.get("reason", ""), c.get("message", "")


BOOTSTRAP_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")
CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
JOINED: dict[str, Any] = {}  # the honest node and when it joined, for the impostor tests


def launched_root(lab: Lab, name: str) -> Path:
    """A launched host's own `/` (its bind-mounted directories)."""
    return lab.dir / "hosts" / name / "fs"


def identity_of(lab: Lab, name: str) -> tuple[bytes, bytes]:
    """(document, signature) as the host's metadata service serves them."""
    answers = imds.read(launched_root(lab, name))
    return answers[imds.DOCUMENT], base64.b64decode(answers[imds.SIGNATURE])


def as_bearer(lab: Lab, token: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST `body` to the lab-a endpoint with `token`, from cp-a: (status, answer)."""
    out = in_host(lab, "cp-a", [
        "curl", "-s", "-m", "40", "--cacert", "/etc/kubernetes/pki/ca.crt", "-X", "POST",
        "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
        "-d", json.dumps(body), "-w", "\n%{http_code}",
        lab.inventory.zone("lab-a").endpoint.url + path], timeout=50)
    answer, _, code = out.stdout.rpartition("\n")
    if code in ("", "000"):  # no answer: what the control plane said about it
        logs = [lab.dir / "hosts" / host / "fs/var/lib/mzk/log" / f"{service}.log"
                for host in ("cp-a", "cp-b", "cp-c")
                for service in ("mzk-csr-approver", "kube-apiserver")]
        tails = {str(log.relative_to(lab.dir)): log.read_text(errors="replace")[-1500:]
                 for log in logs if log.exists()}
        raise AssertionError(f"no answer from {path}: {out.stderr!r}; {tails}")
    return int(code), json.loads(answer) if answer.strip().startswith("{") else answer


def whoami(lab: Lab, token: str) -> tuple[int, Any]:
    return as_bearer(lab, token, "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                     {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})


def client_request(lab: Lab, token: str, name: str) -> str:
    """A kubelet's client certificate request for `name`, made with `token`; its name."""
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{name}")])).sign(
        key, hashes.SHA256())
    pem = request.public_bytes(serialization.Encoding.PEM)
    code, answer = as_bearer(lab, token, "/apis/certificates.k8s.io/v1/"
                             "certificatesigningrequests", {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "mzk-test-"},
        "spec": {"request": base64.b64encode(pem).decode(), "signerName": CLIENT_SIGNER,
                 "usages": ["digital signature", "client auth"]}})
    assert code == 201, (code, answer)
    return str(answer["metadata"]["name"])


def csr_named(lab: Lab, name: str) -> dict[str, Any]:
    return get_json(lab, f"csr {name}")  # type: ignore[no-any-return]


def stop_launched(lab: Lab, name: str) -> None:
    """An impostor's machine is switched off (its kubelet would retry for ever)."""
    hosts.kill_namespace(f"{lab.layout.prefix}-{name}")


@pytest.fixture(scope="module")
def still_booting(nlab: Lab) -> launch.Launched:
    """A launched instance, running with its identity, whose user data has not run yet: a
    sibling that is in the record but not registered (the case a name alone cannot tell)."""
    return launch.launch(nlab.dir, "lab-a", boot=False)


def test_an_auto_scaled_node_joins_with_its_instance_identity_alone(nlab: Lab) -> None:
    started = time.monotonic()
    node = launch.launch(nlab.dir, "lab-b")
    JOINED["node"] = node
    # No secret anywhere: the user data holds none, the node made its credential from the
    # document the lab's "cloud" signed for it, and the cluster holds no join token.
    assert not BOOTSTRAP_TOKEN.search(node.user_data)
    assert not re.search(r"^\s*token:", node.user_data, re.M)
    root = launched_root(nlab, node.name)
    kubeconfig = root / kc.BOOTSTRAP_KUBECONFIG.lstrip("/")
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    (token,) = re.findall(r"^    token: (\S+)$", kubeconfig.read_text(), re.M)
    assert instance_identity.parse_identity_token(token) == identity_of(nlab, node.name)
    assert json.loads(identity_of(nlab, node.name)[0])["instanceId"] == node.instance_id
    assert stat.S_IMODE((root / imds.HOST_DIR.lstrip("/")).stat().st_mode) == 0o700
    for path in (root / "etc").rglob("*"):
        if path.is_file() and path.stat().st_size < 1 << 20:
            assert not BOOTSTRAP_TOKEN.search(path.read_text(errors="replace")), path
    secrets = get_json(nlab, "secrets -n kube-system --field-selector "
                             "type=bootstrap.kubernetes.io/token")["items"]
    assert secrets == []

    def admitted() -> bool:
        found = nodes_by_name(nlab).get(node.name)
        return bool(found and ready(found) and not [
            t for t in found["spec"].get("taints") or [] if t["key"] == kc.CHECKS_TAINT])

    took = until(admitted, 150, f"{node.name} Ready and admitted")
    JOINED["registered_by"] = time.monotonic()
    workload.import_on(nlab, node.name)  # pods may land there now
    print(f"\n{node.name}: start to Ready and admitted in {time.monotonic() - started:.1f} s "
          f"({took:.1f} s after its user data)")
    joined = nodes_by_name(nlab)[node.name]
    assert joined["metadata"]["labels"][kc.ZONE_LABEL] == "lab-b"
    assert {"type": "InternalIP", "address": node.address} in joined["status"]["addresses"]
    decided = {c["spec"]["signerName"]: c for c in csrs_for(nlab, node.name)}
    client = decided[CLIENT_SIGNER]
    assert client["spec"]["username"] == f"mzk:instance:{node.instance_id}"
    assert f"system:bootstrappers:mzk:{node.pool}" in client["spec"]["groups"]
    assert condition(client)[:2] == ("Approved", "MzkIdentityVerified")
    serving = decided["kubernetes.io/kubelet-serving"]
    assert serving["spec"]["username"] == f"system:node:{node.name}"
    assert condition(serving)[:2] == ("Approved", "MzkIdentityVerified")
    # Its serving certificate is the cluster CA's, for its address: the API server verifies it.
    served = x509.load_pem_x509_certificate(base64.b64decode(serving["status"]["certificate"]))
    sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert node.address in [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
    ca = x509.load_pem_x509_certificate((nlab.dir / "pki" / "local" / "pki" / "ca.crt")
                                        .read_bytes())
    served.verify_directly_issued_by(ca)  # raises unless the cluster CA signed it
    assert check_lines(nlab)[node.name] == (
        f"{node.name}: lab-b, joined by TLS bootstrapping, Ready, admitted")


def test_an_instance_claiming_a_siblings_name_gets_nothing(
        nlab: Lab, still_booting: launch.Launched) -> None:
    victim = still_booting.name  # running, in the record, not registered yet
    impostor = launch.launch(nlab.dir, "lab-c", claim=victim)
    assert impostor.claimed == victim != impostor.name

    def denied() -> list[dict[str, Any]]:
        return [c for c in csrs_for(nlab, victim) if condition(c)[0] == "Denied"]

    try:
        until(lambda: bool(denied()), 60, "the impostor's request denied")
    finally:
        stop_launched(nlab, impostor.name)
    csr = denied()[0]
    # It authenticated as itself, never as the sibling it named.
    assert csr["spec"]["username"] == f"mzk:instance:{impostor.instance_id}"
    kind, reason, message = condition(csr)
    assert reason == "MzkIdentityNotVerified" and victim in message, message
    assert not csr["status"].get("certificate")
    assert not [c for c in csrs_for(nlab, victim) if condition(c)[0] == "Approved"]
    assert victim not in nodes_by_name(nlab)


def test_a_second_certificate_for_the_same_instance_is_denied(
        nlab: Lab, still_booting: launch.Launched) -> None:
    token = instance_identity.identity_token(*identity_of(nlab, still_booting.name))
    first = client_request(nlab, token, still_booting.name)
    until(lambda: condition(csr_named(nlab, first))[0] == "Approved", 30, "first approved")
    assert csr_named(nlab, first)["status"].get("certificate")
    second = client_request(nlab, token, still_booting.name)
    until(lambda: condition(csr_named(nlab, second))[0] == "Denied", 30, "second denied")
    kind, reason, message = condition(csr_named(nlab, second))
    assert reason == "MzkIdentityNotVerified" and "already approved" in message, message
    assert not csr_named(nlab, second)["status"].get("certificate")


def node_home(lab: Lab, name: str):  # type: ignore[no-untyped-def]
    return lab.layout.host(name).home(lab.dir)


def test_node_loss_moves_pods_and_the_node_comes_back(nlab: Lab) -> None:
    lost = nlab.inventory.nodes[0]
    before = {p["metadata"]["name"] for p in running_pods(nlab, "default", "web")
              if p["spec"]["nodeName"] == lost.name}
    assert before
    build.power_off(nlab.dir, lost.name)
    until(lambda: not ready(nodes_by_name(nlab)[lost.name]), 60, "node NotReady")

    def moved() -> bool:
        pods = running_pods(nlab, "default", "web")
        return len(pods) == 6 and all(p["spec"]["nodeName"] != lost.name for p in pods)

    until(moved, 120, "6 web pods running on the other nodes")
    build.power_on(nlab.dir, lost.name)
    report = apply(nlab)
    assert any(line.startswith(f"{lost.name}: nodes: ") for line in report.lines())
    node = nodes_by_name(nlab)[lost.name]
    assert ready(node)
    assert check_lines(nlab)[lost.name].endswith("node checks passed")


def forged(document: bytes, signature: bytes) -> list[tuple[str, str]]:
    """Tokens an attacker can make without the cloud's key: (what, token)."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    moved = document.replace(b'"privateIp"', b'"privateIp" ', 1)  # one byte more
    return [("altered document", instance_identity.identity_token(moved, signature)),
            ("signed by another key", instance_identity.identity_token(
                document, other.sign(document, padding.PKCS1v15(), hashes.SHA256()))),
            ("a bootstrap token", "abcdef.0123456789abcdef")]


def test_a_copied_or_forged_identity_is_not_authenticated(
        nlab: Lab, still_booting: launch.Launched) -> None:
    # The honest way: an instance not registered yet is who its document says.
    booting = instance_identity.identity_token(*identity_of(nlab, still_booting.name))
    code, answer = whoami(nlab, booting)
    assert code == 201, answer
    user = answer["status"]["userInfo"]
    assert user["username"] == f"mzk:instance:{still_booting.instance_id}"
    assert f"system:bootstrappers:mzk:{still_booting.pool}" in user["groups"]
    # A copy of the joined node's document is worth nothing: its node is registered (once
    # the API server's cache of its last review, 30 s, is past: this test runs late in the
    # file; a second client certificate would be denied even within it).
    joined = JOINED["node"]
    time.sleep(max(0.0, JOINED["registered_by"] + 31 - time.monotonic()))
    copied = instance_identity.identity_token(*identity_of(nlab, joined.name))
    assert whoami(nlab, copied)[0] == 401
    for what, token in forged(*identity_of(nlab, still_booting.name)):
        assert whoami(nlab, token)[0] == 401, what
    # The same through a kubelet: a host presenting the joined node's document.
    thief = launch.launch(nlab.dir, "lab-c", steal=joined.name)
    log = launched_root(nlab, thief.name) / "var/lib/mzk/log/kubelet.log"
    try:
        until(lambda: log.exists() and "Unauthorized" in log.read_text(errors="replace"),
              60, "the thief's kubelet refused")
    finally:
        stop_launched(nlab, thief.name)
    assert [c["metadata"]["name"] for c in get_json(nlab, "csr")["items"]
            if c["spec"]["username"] == f"mzk:instance:{joined.instance_id}"
            and c["spec"]["signerName"] == CLIENT_SIGNER] == [
        c["metadata"]["name"] for c in csrs_for(nlab, joined.name)
        if c["spec"]["signerName"] == CLIENT_SIGNER]  # only its own, first request


def test_a_second_apply_changes_nothing(nlab: Lab) -> None:
    report = apply(nlab)
    assert not report.changed, report.lines()
