"""The control plane on the real lab: kube-apiserver, controller-manager and scheduler (the
Kubernetes 1.36 binaries of MZK_K8S_BIN_DIR) in three zones, behind the lab's haproxy
endpoints, bootstrapped by `apply`.

The tests share one lab and run in file order, each leaving the lab converged.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from bootstrap.apply_command import execute
from bootstrap.engine import ActionFailed
from bootstrap.inventory import Inventory
from bootstrap.lab import build
from bootstrap.pki.table import KUBECONFIGS, LEAF_BY_NAME
from bootstrap.runner import Result
from bootstrap.ssh import Connections
from bootstrap.steps import etcd as etcd_step

from .conftest import (
    KUBECTL,
    Lab,
    apply,
    in_host,
    kill_host,
    kubectl,
    lab_unavailable,
    netns_commands,
    on,
    require_k8s_binaries,
    running_lab,
)

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
PKI = "/etc/kubernetes/pki"
ETCDCTL = (f"ETCDCTL_API=3 etcdctl --cacert={PKI}/etcd/ca.crt "
           f"--cert={PKI}/apiserver-etcd-client.crt --key={PKI}/apiserver-etcd-client.key "
           "--dial-timeout=2s --command-timeout=3s")


@pytest.fixture(scope="module")
def cplab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab of its own (3 control-plane hosts, 3 workers) with the control plane applied."""
    reason = lab_unavailable()
    if reason:
        pytest.fail(reason)
    require_k8s_binaries()
    with running_lab(tmp_path_factory, "cplab", workers=3) as running:
        execute(running.inventory, running.dir / "pki", dry_run=False)
        yield running


@pytest.fixture(autouse=True)
def heal(request: pytest.FixtureRequest, cplab: Lab) -> Iterator[None]:
    """After a failed test or a host left down: bring sshd back and re-apply."""
    yield
    down = [s.name for s in build.status(cplab.dir) if not s.sshd_up]
    for name in down:
        build.restart_sshd(cplab.dir, name)
    report = getattr(request.node, "report_call", None)
    if down or (report is not None and report.failed):
        try:
            execute(cplab.inventory, cplab.dir / "pki", dry_run=False)
        except ActionFailed:
            pass


def curl_code(lab: Lab, host: str, url: str, max_time: float = 2) -> str:
    """The HTTP status, or `000 <curl's error>` when there is none."""
    ca = str(lab.dir / "pki" / "local" / "pki" / "ca.crt")
    out = in_host(lab, host, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                              "--max-time", f"{max_time:g}", "--cacert", ca, url],
                  timeout=max_time + 10)
    code = out.stdout.strip()
    return code if code != "000" else f"000 {out.stderr.strip()[-100:]}"


def served_by(lab: Lab, host: str, endpoint: str) -> str:
    """Which control-plane host answered a TLS handshake on `endpoint`: the serving
    certificate names its host."""
    code = ("import socket,ssl,sys\n"
            "c=ssl.create_default_context(cafile=sys.argv[2])\n"
            "s=c.wrap_socket(socket.create_connection((sys.argv[1],6443),timeout=3),"
            "server_hostname=sys.argv[1])\n"
            "sys.stdout.buffer.write(s.getpeercert(binary_form=True))\n")
    ca = str(lab.dir / "pki" / "local" / "pki" / "ca.crt")
    out = subprocess.run(["nsenter", "-t", str(json.loads(
        (lab.dir / "lab-state.json").read_text())["pids"][host]), "-n", "-m", "/usr/bin/python3",
        "-c", code, endpoint, ca], capture_output=True, timeout=10, check=False)
    assert out.returncode == 0, out.stderr
    cert = x509.load_der_x509_certificate(out.stdout)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = [n for n in names.get_values_for_type(x509.DNSName) if n.startswith("cp-")]
    return hosts[0]


def service_pids(lab: Lab) -> dict[str, str]:
    pids = {}
    for host in ("cp-a", "cp-b", "cp-c"):
        for svc in ("etcd", "etcd-events", "kube-apiserver", "kube-controller-manager",
                    "kube-scheduler"):
            path = lab.layout.host(host).home(lab.dir) / "fs" / "run" / "mzk" / f"{svc}.pid"
            pids[f"{host}/{svc}"] = path.read_text().strip()
    return pids


# --------------------------------------------------------------------------- identities


def test_every_kubeconfig_authenticates_as_its_table_row(cplab: Lab) -> None:
    for kc in KUBECONFIGS:
        host = "node-1" if "node" in kc.roles else "cp-a"
        who = json.loads(kubectl(cplab, host, "auth whoami -o json",
                                 kubeconfig=kc.path).stdout)["status"]["userInfo"]
        assert who["username"] == kc.cn.format(node=host), kc.file
        assert set(kc.orgs) <= set(who.get("groups", [])), kc.file
    # The operator's admin.conf, from zone A, through the regional endpoint.
    admin = str(cplab.dir / "pki" / "local" / "admin.conf")
    out = in_host(cplab, "node-1", [KUBECTL(),
                                    f"--kubeconfig={admin}", "auth", "whoami", "-o", "json"])
    assert json.loads(out.stdout)["status"]["userInfo"]["username"] == "kubernetes-admin"


def test_client_certificates_authenticate_as_the_document_says(cplab: Lab) -> None:
    url = f"https://{cplab.inventory.host('cp-a').address}:6443"

    def whoami(leaf: str) -> Result:
        row = LEAF_BY_NAME[leaf]
        return kubectl(cplab, "cp-a", f"--server={url} --certificate-authority={PKI}/ca.crt "
                                      f"--client-certificate={row.cert_path} "
                                      f"--client-key={row.key_path} --kubeconfig=/dev/null "
                                      "auth whoami -o json", kubeconfig="/dev/null",
                       check=False)

    kubelet_client = whoami("kube-apiserver-kubelet-client")
    info = json.loads(kubelet_client.stdout)["status"]["userInfo"]
    assert info["username"] == "kube-apiserver-kubelet-client"
    assert "system:masters" in info["groups"]
    # Signed by the front-proxy CA, not the cluster CA: not a client identity.
    refused = whoami("front-proxy-client")
    assert not refused.ok and "Unauthorized" in refused.stderr


def test_anonymous_requests_are_refused_except_health(cplab: Lab) -> None:
    base = "https://api-a.lab.internal:6443"
    assert curl_code(cplab, "node-1", f"{base}/readyz") == "200"
    assert curl_code(cplab, "node-1", f"{base}/livez") == "200"
    for path in ("/api", "/version", "/api/v1/namespaces/default/pods", "/metrics"):
        assert curl_code(cplab, "node-1", base + path) == "401", path


def test_the_kubelet_client_may_use_the_kubelet_api(cplab: Lab) -> None:
    allowed = kubectl(cplab, "cp-a", "auth can-i get nodes/proxy --as "
                                     "kube-apiserver-kubelet-client", check=False)
    assert allowed.stdout.strip() == "yes"
    binding = json.loads(kubectl(cplab, "cp-a", "get clusterrolebinding "
                                 "multizone-k8s:kube-apiserver-kubelet-client -o json").stdout)
    assert binding["roleRef"]["name"] == "system:kubelet-api-admin"


# --------------------------------------------------------------------------- hardening


def test_a_secret_is_stored_encrypted_in_etcd(cplab: Lab) -> None:
    kubectl(cplab, "cp-a", "create secret generic enc-test -n default "
                           "--from-literal=password=plain-text-canary")
    raw = on(cplab, "cp-b", f"{ETCDCTL} --endpoints=https://127.0.0.1:2379 get "
                            "/registry/secrets/default/enc-test --print-value-only")
    assert raw.stdout.startswith("k8s:enc:secretbox:v1:key-"), raw.stdout[:40]
    assert "plain-text-canary" not in raw.stdout
    assert base64.b64encode(b"plain-text-canary").decode() not in raw.stdout
    got = kubectl(cplab, "cp-c", "get secret enc-test -n default -o jsonpath={.data.password}")
    assert base64.b64decode(got.stdout) == b"plain-text-canary"
    mode = on(cplab, "cp-a", "stat -c %a /etc/kubernetes/encryption.yaml").stdout.strip()
    assert mode == "600"
    keys = cplab.dir / "pki" / "local" / "encryption-keys.yaml"
    assert oct(keys.stat().st_mode & 0o777) == "0o600"


PRIVILEGED_POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "priv"},
    "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                             "securityContext": {"privileged": True}}]}}


def test_pod_security_rejects_privileged_pods_except_in_kube_system(cplab: Lab) -> None:
    # Admission looks the pod's service account up: wait until the controller-manager has
    # made the default ones (a fresh cluster takes a few seconds).
    deadline = time.monotonic() + 60
    while not all(kubectl(cplab, "cp-a", f"get serviceaccount default -n {ns}",
                          check=False).ok for ns in ("default", "kube-system")):
        assert time.monotonic() < deadline, "no default service accounts after 60 s"
        time.sleep(1)
    pod = json.dumps(PRIVILEGED_POD).encode()
    rejected = kubectl(cplab, "cp-a", "create --dry-run=server -n default -f -", check=False,
                       stdin=pod)
    assert not rejected.ok and "violates PodSecurity" in rejected.stderr, rejected.stderr
    accepted = kubectl(cplab, "cp-a", "create --dry-run=server -n kube-system -f -",
                       check=False, stdin=pod)
    assert accepted.ok, accepted.stderr
    labels = json.loads(kubectl(cplab, "cp-a", "get ns -o json").stdout)["items"]
    for ns in labels:
        found = ns["metadata"].get("labels", {})
        want = "privileged" if ns["metadata"]["name"] == "kube-system" else "baseline"
        assert found.get("pod-security.kubernetes.io/enforce") == want
        assert found.get("pod-security.kubernetes.io/enforce-version") == "v1.36"
    kube_system = next(n for n in labels if n["metadata"]["name"] == "kube-system")
    assert "multizone-k8s/pod-security" in kube_system["metadata"]["annotations"]


def test_only_the_api_server_listens_beyond_loopback(cplab: Lab) -> None:
    """...and etcd to its peers, sshd, and (the lab runs Konnectivity) the proxy-server to
    agents (8132) and to the balancers' health checks (8134); every one on the host's own
    address, none on all addresses."""
    assert cplab.inventory.cluster.egress == "konnectivity"
    listening = on(cplab, "cp-a", "ss -Hltnp").stdout
    remote = {line.split()[3] for line in listening.splitlines()
              if not line.split()[3].startswith(("127.0.0.1:", "[::1]:"))}
    address = cplab.inventory.host("cp-a").address
    assert remote == {f"{address}:{port}" for port in (22, 6443, 2379, 2380, 2382, 2383,
                                                       8132, 8134)}, remote


# --------------------------------------------------------------------------- converged


def test_check_reports_every_service_and_endpoint(cplab: Lab) -> None:
    deadline = time.monotonic() + 30  # a lease may be between holders (15 s leases)
    while True:
        proc = subprocess.run([sys.executable, "-m", "bootstrap", "check",
                               str(cplab.dir / "inventory.yaml")], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = {line.split(":")[0]: line for line in proc.stdout.splitlines()}
        held = [sum(f"holds {lease} lease" in line for line in lines.values())
                for lease in ("controller-manager", "scheduler")]
        if held == [1, 1] or time.monotonic() > deadline:
            break
        time.sleep(1)
    for host in ("cp-a", "cp-b", "cp-c"):
        assert "apiserver ready v1.36" in lines[host]
        assert "controller-manager healthy" in lines[host] and "scheduler healthy" in lines[host]
        assert "api.lab.internal answers" in lines[host]
    assert sum("holds controller-manager lease" in lines[h] for h in lines) == 1
    assert sum("holds scheduler lease" in lines[h] for h in lines) == 1


def test_second_apply_changes_nothing_and_plan_says_so(cplab: Lab) -> None:
    pids = service_pids(cplab)
    assert not apply(cplab).changed
    assert service_pids(cplab) == pids
    proc = subprocess.run([sys.executable, "-m", "bootstrap", "plan",
                           str(cplab.dir / "inventory.yaml"), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines() == ["plan: no changes"], proc.stdout + proc.stderr


# --------------------------------------------------------------------------- rolling


def oks_count(results: list[tuple[float, bool, str]]) -> int:
    return sum(1 for r in results if not r[1])


def etcd_writer(lab: Lab, prefix: str, written: list[str], retried: list[str]):  # type: ignore[no-untyped-def]
    """A client writing a new key per call to the main cluster (all three members as
    endpoints), from zone A, with the certificates on cp-a. Like the API server's own
    client, it tries a failed write again (at most three attempts, 0.2 s apart): the write
    counts as failed only if no attempt succeeded; first attempts that failed are kept in
    `retried` to be reported."""
    addresses = ",".join(f"https://{lab.inventory.host(h).address}:2379"
                         for h in ("cp-a", "cp-b", "cp-c"))
    pki = lab.layout.host("cp-a").home(lab.dir) / "fs" / "etc" / "kubernetes" / "pki"
    counter = iter(range(10**6))

    def put() -> tuple[bool, str]:
        key = f"{prefix}{next(counter):05d}"
        error = ""
        for attempt in range(3):
            out = in_host(lab, "node-1", [
                "etcdctl", f"--endpoints={addresses}", f"--cacert={pki}/etcd/ca.crt",
                f"--cert={pki}/apiserver-etcd-client.crt",
                f"--key={pki}/apiserver-etcd-client.key", "--dial-timeout=2s",
                "--command-timeout=5s", "put", key, "v"])
            if out.returncode == 0:
                written.append(key)
                return True, ""
            error = out.stderr.strip()[-120:]
            if attempt == 0:
                retried.append(f"{key}: {error}")
            time.sleep(0.2)
        return False, error

    return put


class Prober(threading.Thread):
    """Calls `probe()` every 100 ms until stopped; records failures."""

    def __init__(self, probe) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.probe = probe
        self.stopped = threading.Event()
        self.results: list[tuple[float, bool, str]] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            ok, detail = self.probe()
            self.results.append((started, ok, detail))
            self.stopped.wait(max(0.0, 0.1 - (time.monotonic() - started)))

    def stop(self) -> list[tuple[float, bool, str]]:
        self.stopped.set()
        self.join(10)
        return self.results


def test_a_flag_change_rolls_one_api_server_at_a_time_without_a_failed_probe(
        cplab: Lab) -> None:
    def readyz() -> tuple[bool, str]:  # a client's 5 s timeout: two cores share the load
        code = curl_code(cplab, "node-1", "https://api.lab.internal:6443/readyz", max_time=5)
        return code == "200", code

    prober = Prober(readyz)
    prober.start()
    time.sleep(0.5)
    scaled = dataclasses.replace(cplab.inventory, cluster=dataclasses.replace(
        cplab.inventory.cluster, max_nodes=3000))
    plan_lines = apply(cplab, scaled, dry_run=True).lines()
    report = apply(cplab, scaled)
    time.sleep(0.5)
    results = prober.stop()
    restarted = [line for line in report.lines() if "restart kube-apiserver" in line]
    assert len(restarted) == 3, report.lines()
    assert all("--max-requests-inflight=400 -> 1800" in line for line in restarted)
    assert plan_lines == report.lines()
    # At most one lone probe may be cut mid-request (an HTTP/2 stream closed while a
    # server restarts, seen about once in several runs on this 2-core machine since every
    # control-plane host also runs a proxy-server); never two in a row.
    failed = [r for r in results if not r[1]]
    assert len(results) > 20 and len(failed) <= 1, failed
    oks = [ok for _t, ok, _d in results]
    assert not any(not a and not b for a, b in zip(oks, oks[1:], strict=False)), failed
    assert not apply(cplab, scaled).changed
    apply(cplab)  # back to the lab's own inventory
    assert not apply(cplab).changed


def test_an_etcd_change_rolls_one_member_at_a_time_and_loses_no_write(
        cplab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    retried: list[str] = []
    put = etcd_writer(cplab, "/rolling/", written, retried)

    original = etcd_step.service

    def with_heartbeat(*args, **kwargs):  # type: ignore[no-untyped-def]
        svc = original(*args, **kwargs)
        return dataclasses.replace(svc, command_line=(*svc.command_line,
                                                      "--heartbeat-interval=100"))

    writer = Prober(put)
    writer.start()
    time.sleep(0.5)
    monkeypatch.setattr(etcd_step, "service", with_heartbeat)
    planned = apply(cplab, dry_run=True).lines()
    report = apply(cplab)
    assert planned == report.lines()
    monkeypatch.setattr(etcd_step, "service", original)
    report_back = apply(cplab)
    time.sleep(0.5)
    results = writer.stop()
    started = [line for line in report.lines() if "and (re)start etcd" in line]
    assert len(started) == 6, report.lines()
    assert len([line for line in report_back.lines() if "(re)start etcd" in line]) == 6
    failed = [r for r in results if not r[1]]
    assert len(results) > 20 and not failed, failed
    print(f"etcd roll: {len(results)} writes, none failed; {len(retried)} first attempts "
          "retried")
    listed = on(cplab, "cp-a", f"{ETCDCTL} --endpoints=https://127.0.0.1:2379 get /rolling/ "
                               "--prefix --keys-only").stdout.split()
    assert set(written) <= set(listed)
    assert not apply(cplab).changed


# --------------------------------------------------------------------------- zone drill


def _lease_holders(lab: Lab, via: str) -> dict[str, str]:
    out = kubectl(lab, via, "get lease -n kube-system kube-controller-manager kube-scheduler "
                            "-o json", check=False)
    if not out.ok:
        return {}
    return {i["metadata"]["name"]: i["spec"].get("holderIdentity", "").split("_")[0]
            for i in json.loads(out.stdout)["items"]}


FAILOVER_BOUND_S = 3.0  # haproxy checks every 300 ms; one failure marks a server down


def test_losing_cp_a_moves_zone_a_to_another_zone_and_back(cplab: Lab) -> None:
    assert served_by(cplab, "node-1", "api-a.lab.internal") == "cp-a"
    holders = _lease_holders(cplab, "cp-b")
    kill_host(cplab, "cp-a")
    killed = time.monotonic()

    # Zone A's endpoint answers from another zone within the bound.
    while curl_code(cplab, "node-1", "https://api-a.lab.internal:6443/readyz") != "200":
        assert time.monotonic() - killed < FAILOVER_BOUND_S, "zone A endpoint did not fail over"
        time.sleep(0.05)
    failover = time.monotonic() - killed
    assert served_by(cplab, "node-1", "api-a.lab.internal") in ("cp-b", "cp-c")

    # Writes through the regional endpoint go on.
    admin = str(cplab.dir / "pki" / "local" / "admin.conf")
    tool = KUBECTL()
    # (If cp-a led etcd, the first write may wait out the election: within 15 s.)
    deadline = time.monotonic() + 15
    while True:
        made = in_host(cplab, "node-1", [tool, f"--kubeconfig={admin}", "create", "configmap",
                                         "drill", "-n", "default", "--from-literal=zone=a-down"],
                       timeout=30)
        if made.returncode == 0 or "AlreadyExists" in made.stderr \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert made.returncode == 0 or "AlreadyExists" in made.stderr, made.stderr

    # Leases held by cp-a move to a living host.
    deadline = time.monotonic() + 60
    while True:
        now = _lease_holders(cplab, "cp-b")
        if now and all(h != "cp-a" for h in now.values()):
            break
        assert time.monotonic() < deadline, f"leases still on cp-a: {now} (were {holders})"
        time.sleep(1)

    # cp-a comes back: apply restarts its services, and zone A is served by cp-a again.
    build.restart_sshd(cplab.dir, "cp-a")
    report = apply(cplab)
    assert {line.split(":")[0] for line in report.lines()} == {"cp-a"}, report.lines()
    deadline = time.monotonic() + 10
    while served_by(cplab, "node-1", "api-a.lab.internal") != "cp-a":
        assert time.monotonic() < deadline, "zone A endpoint not back on cp-a"
        time.sleep(0.2)
    assert not apply(cplab).changed
    print(f"zone A endpoint failed over in {failover:.2f} s")


def test_a_host_that_loses_the_control_plane_role_stops_its_services(cplab: Lab) -> None:
    data = yaml.safe_load((cplab.dir / "inventory.yaml").read_text())
    next(h for h in data["hosts"] if h["name"] == "node-2")["roles"] = ["control-plane", "node"]
    from bootstrap.inventory import parse
    grown = parse(data, source="test")
    report = apply(cplab, grown)
    assert "node-2: control-plane: start kube-apiserver" in report.lines()
    assert curl_code(cplab, "node-2", f"https://{grown.host('node-2').address}:6443/readyz") \
        == "200"
    report = apply(cplab)
    assert any(line.startswith("node-2: control-plane-retire: stop kube-apiserver")
               for line in report.lines()), report.lines()
    comms = list(netns_commands(cplab.layout.host("node-2").netns).values())
    # (comm is cut at 15 characters; kube-proxy stays: node-2 is still a node)
    control_plane = ("kube-apiserver", "kube-controller", "kube-scheduler")
    assert not any(c.startswith(control_plane) for c in comms), comms
    assert not apply(cplab).changed


# --------------------------------------------------------------------------- guards


def test_an_apply_with_another_pki_directory_is_refused_before_any_change(
        cplab: Lab, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    (copy / "inventory.yaml").write_text((cplab.dir / "inventory.yaml").read_text())
    pids = service_pids(cplab)
    proc = subprocess.run([sys.executable, "-m", "bootstrap", "apply",
                           str(copy / "inventory.yaml"), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert "cp-a, cp-b, cp-c" in error and "SHA256:" in error and "--pki-dir" in error
    assert not (copy / "pki").exists()  # the new, refused PKI is not left behind
    assert service_pids(cplab) == pids
    assert not apply(cplab).changed


def test_a_second_apply_is_refused_while_one_holds_the_lock(cplab: Lab) -> None:
    from bootstrap import apply_lock
    from bootstrap.errors import LockBusy

    with Connections(cplab.inventory) as conns:
        held = apply_lock.acquire([conns.runner(cplab.inventory.host("cp-b"))],
                                  owner="tester@bench pid 1 since 2026-11-23T00:00:00Z")
        try:
            with pytest.raises(LockBusy, match=r"cp-b: another apply holds the cluster's "
                                               r"lock \(tester@bench pid 1 since 2026-11-23"):
                apply(cplab)
        finally:
            for lock in held:
                lock.release()
    assert not apply(cplab).changed  # released: the next apply runs


def test_a_lock_whose_holder_died_or_went_silent_is_released(cplab: Lab) -> None:
    from bootstrap import apply_lock

    # A holder that stops sending its heartbeat loses the lock after the silence bound.
    with Connections(cplab.inventory) as conns:
        runner = conns.runner(cplab.inventory.host("cp-a"))
        apply_lock.HeldLock(runner, "silent@x", silence=2, heartbeat=None)
        time.sleep(3)
        assert not apply(cplab).changed
    # A holder process killed outright: its connection drops and the lock with it.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys,time\n"
         "from bootstrap.inventory import load\n"
         "from bootstrap.ssh import Connections\n"
         "from bootstrap.apply_lock import HeldLock\n"
         "inv = load(sys.argv[1])\n"
         "c = Connections(inv).__enter__()\n"
         "HeldLock(c.runner(inv.host('cp-c')), 'doomed@x')\n"
         "print('held', flush=True)\n"
         "time.sleep(600)\n", str(cplab.dir / "inventory.yaml")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 15
        while True:
            try:
                assert not apply(cplab).changed
                break
            except Exception:  # noqa: BLE001 - LockBusy until sshd notices the dead peer
                assert time.monotonic() < deadline, "the dead holder's lock was kept"
                time.sleep(1)
    finally:
        if holder.poll() is None:
            holder.kill()


def test_lab_up_with_another_worker_count_resizes_in_place(cplab: Lab) -> None:
    pids = service_pids(cplab)
    build.up(cplab.dir, workers=4, say=lambda _m: None)
    assert service_pids(cplab) == pids  # etcd and the control plane kept running
    from bootstrap.inventory import load
    grown = load(cplab.dir / "inventory.yaml")
    assert "node-4" in [h.name for h in grown.nodes]
    report = apply(cplab, grown)
    assert {line.split(":")[0] for line in report.lines()} == {"node-4"}, report.lines()
    build.up(cplab.dir, workers=3, say=lambda _m: None)
    assert service_pids(cplab) == pids
    assert cplab.layout.host("node-3").netns in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"{cplab.layout.prefix}-node-4" not in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not apply(cplab).changed


def test_etcd_keeps_its_data_on_its_own_volume(cplab: Lab) -> None:
    for host in ("cp-a", "cp-b", "cp-c"):
        device = cplab.inventory.host(host).etcd_volume
        assert device and device.startswith("/dev/loop")
        mounted = in_host(cplab, host, ["findmnt", "-n", "-r", "-o", "SOURCE,FSTYPE",
                                        "--mountpoint", "/var/lib/etcd"]).stdout.split("\n")
        assert f"{device} ext4" in mounted, mounted
        # The members' data is on the volume: the host directory under the mount is empty.
        beneath = cplab.layout.host(host).home(cplab.dir) / "fs" / "var" / "lib" / "etcd"
        assert list(beneath.iterdir()) == []
        assert on(cplab, host, "test -d /var/lib/etcd/main/member && "
                               "test -d /var/lib/etcd/events/member").ok
    assert not apply(cplab).changed


def test_the_operator_key_rotates_over_ssh_without_replacing_hosts(
        cplab: Lab, tmp_path: Path) -> None:
    from bootstrap.errors import HostConnectionError
    from bootstrap.lab.build import ensure_keypair

    old_key = cplab.inventory.ssh.private_key
    new_public = ensure_keypair(tmp_path / "new_ed25519", "new-operator-key")
    new_public = " ".join(new_public.split()[:2])
    old_public = cplab.inventory.ssh.authorized_keys[0]

    def with_keys(private: str, keys: tuple[str, ...]) -> Inventory:
        return dataclasses.replace(cplab.inventory, ssh=dataclasses.replace(
            cplab.inventory.ssh, private_key=private, authorized_keys=keys))

    def logs_in(private: str) -> bool:
        try:
            with Connections(dataclasses.replace(with_keys(private, ()), ssh=dataclasses.replace(
                    cplab.inventory.ssh, private_key=private, retries=0))) as conns:
                return conns.runner("cp-b").run("true").ok
        except HostConnectionError:
            return False

    # 1. The new key is added (the old one logs in and is kept: it is this run's key).
    report = apply(cplab, with_keys(old_key, (new_public,)))
    assert len([line for line in report.lines() if "ssh-access: write" in line]) == 7  # +bastion
    assert logs_in(str(tmp_path / "new_ed25519")) and logs_in(old_key)
    # 2. Switch to the new key: the old one is gone from every host.
    apply(cplab, with_keys(str(tmp_path / "new_ed25519"), (new_public,)))
    assert not logs_in(old_key)
    assert logs_in(str(tmp_path / "new_ed25519"))
    # Back to the lab's own key, the same way round.
    apply(cplab, with_keys(str(tmp_path / "new_ed25519"), (old_public,)))
    apply(cplab)
    assert not logs_in(str(tmp_path / "new_ed25519"))
    assert not apply(cplab).changed


def test_rotating_every_ca_keeps_the_api_and_etcd_available(cplab: Lab, tmp_path: Path) -> None:
    local = cplab.dir / "pki" / "local" / "pki"
    bundle = tmp_path / "trusted.crt"

    def trusted() -> str:  # what a client outside the cluster trusts: old and new CA
        parts = [p.read_bytes() for p in (local / "ca.crt", local / "next" / "ca.crt")
                 if p.exists()]
        bundle.write_bytes(b"".join(parts) + (bundle.read_bytes() if bundle.exists() else b""))
        return str(bundle)

    def readyz() -> tuple[bool, str]:
        out = in_host(cplab, "node-1", ["curl", "-sS", "-o", "/dev/null", "-w",
                                        "%{http_code}", "--max-time", "5", "--cacert", trusted(),
                                        "https://api.lab.internal:6443/readyz"])
        return out.stdout.strip() == "200", out.stdout.strip() + out.stderr.strip()[-100:]

    written: list[str] = []
    retried: list[str] = []
    put = etcd_writer(cplab, "/rotation/", written, retried)

    def rotate(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "bootstrap", "rotate-ca",
                               str(cplab.dir / "inventory.yaml"), "--quiet", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    old_ca = (local / "ca.crt").read_bytes()
    trusted()
    probes, writer = Prober(readyz), Prober(put)
    probes.start()
    writer.start()
    try:
        marks = [("start", time.monotonic())]
        rotate("--through", "trust")
        marks.append(("trusted", time.monotonic()))
        build.up(cplab.dir, workers=3, say=lambda _m: None)  # the lab's balancers trust both
        marks.append(("balancers", time.monotonic()))
        rotate()  # switch and retire
        marks.append(("retired", time.monotonic()))
        build.up(cplab.dir, workers=3, say=lambda _m: None)
        marks.append(("balancers", time.monotonic()))
        time.sleep(1)
    finally:
        api_results, etcd_results = probes.stop(), writer.stop()
    # Measured here: a probe now and then fails alone (e.g. 3 of ~740, each an HTTP/2
    # stream cut mid-request, in the trust and switch phases, while etcd members and API
    # servers restart one at a time; new API server certificates are written only in each
    # host's own drained turn). The claim tested: neither the API nor etcd is ever
    # unavailable for two probes in a row, and no acknowledged write is lost.
    assert len(api_results) > 50 and len(etcd_results) > 50
    for name, results in (("readyz", api_results), ("etcd put", etcd_results)):
        oks = [ok for _t, ok, _d in results]
        runs = [i for i in range(1, len(oks)) if not oks[i] and not oks[i - 1]]
        assert not runs, (name, [results[i] for i in runs][:3], marks)
        assert oks.count(False) <= len(oks) // 100, (name, [r for r in results if not r[1]])
    start = marks[0][1]
    print(f"rotation: readyz {len(api_results)} probes, {oks_count(api_results)} failed alone; "
          f"etcd {len(etcd_results)} writes, {oks_count(etcd_results)} failed, "
          f"{len(retried)} first attempts retried; failures at "
          f"{[(round(t - start, 1), d) for t, ok, d in api_results + etcd_results if not ok]}, "
          f"phases at {[(name, round(t - start, 1)) for name, t in marks]}")
    # The new CA is the only one trusted; every leaf is its; nothing is left to do.
    new_ca = (local / "ca.crt").read_bytes()
    assert new_ca != old_ca and not (local / "next" / "ca.crt").exists()
    host_ca = (cplab.layout.host("cp-b").home(cplab.dir) / "fs" / "etc" / "kubernetes" / "pki"
               / "ca.crt").read_bytes()
    assert host_ca == new_ca
    listed = on(cplab, "cp-a", f"{ETCDCTL} --endpoints=https://127.0.0.1:2379 get /rotation/ "
                               "--prefix --keys-only").stdout.split()
    assert set(written) <= set(listed)
    assert "kubernetes-admin" in in_host(cplab, "node-1", [
        KUBECTL(), f"--kubeconfig={cplab.dir}/pki/local/admin.conf",
        "auth", "whoami"]).stdout
    assert not apply(cplab).changed
