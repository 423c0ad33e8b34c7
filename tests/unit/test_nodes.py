"""Nodes without a lab: the kubelet's configuration, node checks, the user data of joined
nodes (their identity token from IMDSv2 or the lab's "IMDS"), the lab's signing "cloud",
the approver's service and trust, the RBAC for joining, and the inventory's node pools and
identity trust."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import http.server
import json
import os
import re
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bootstrap import inventory as inventory_module
from bootstrap.engine import HostContext
from bootstrap.errors import ConfigError, StepError
from bootstrap.hostfiles import FileSpec
from bootstrap.inventory import NodePool
from bootstrap.lab import imds
from bootstrap.node import checks, cni, containerd_config, instance_identity, join
from bootstrap.node import kubelet_config as kc
from bootstrap.pki import generate
from bootstrap.services import ServiceStatus, render_unit, unit_path
from bootstrap.steps import node_join, nodes

T0 = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inventory.yaml"


# --------------------------------------------------------------------------- kubelet


def test_the_kubelet_configuration_is_hardened_on_every_kind_of_host() -> None:
    for lab in (False, True):
        for joined in (False, True):
            config = yaml.safe_load(kc.config_yaml(kc.KubeletSettings(
                lab=lab, cluster_dns="10.96.0.10", cluster_domain="cluster.local",
                cgroup_root="/mzk-x-node-1" if lab else None, tls_bootstrap=joined)))
            assert config["authentication"]["anonymous"] == {"enabled": False}
            assert config["authentication"]["webhook"]["enabled"] is True
            assert config["authentication"]["x509"]["clientCAFile"] == kc.CA_FILE
            assert config["authorization"] == {"mode": "Webhook"}
            assert config["readOnlyPort"] == 0
            assert config["healthzBindAddress"] == "127.0.0.1"
            assert config["maxPods"] == 110
            assert config["protectKernelDefaults"] is True
            assert config["registerWithTaints"] == [{"key": kc.CHECKS_TAINT,
                                                     "effect": "NoSchedule"}]
            assert config["serverTLSBootstrap"] is joined
            assert config["rotateCertificates"] is joined
            assert config["cgroupDriver"] == ("cgroupfs" if lab else "systemd")
            # cgroup v1 and a root of its own: the lab only.
            assert ("failCgroupV1" in config) is lab
            assert config.get("cgroupRoot") == ("/mzk-x-node-1" if lab else None)


def test_the_kubelet_command_names_the_table_files_or_the_bootstrap_kubeconfig() -> None:
    inventory_node = kc.command("/k/kubelet", "node-1", "10.0.1.20", "eu-west-1a")
    assert "--tls-cert-file=/var/lib/kubelet/pki/kubelet.crt" in inventory_node
    assert not any(w.startswith("--bootstrap-kubeconfig") for w in inventory_node)
    assert ("--node-labels=topology.kubernetes.io/zone=eu-west-1a,"
            "topology.kubernetes.io/region=eu-west-1") in inventory_node
    joined = kc.command("/k/kubelet", "ip-10-0-1-5", "10.0.1.5", "lab-b", tls_bootstrap=True)
    assert f"--bootstrap-kubeconfig={kc.BOOTSTRAP_KUBECONFIG}" in joined
    assert not any(w.startswith("--tls-cert-file") for w in joined)
    assert "--node-labels=topology.kubernetes.io/zone=lab-b," \
           "topology.kubernetes.io/region=lab" in joined


def test_containerd_renders_our_network_template_unless_the_cluster_brings_its_own() -> None:
    ours = containerd_config.for_node(lab=False, pod_network=True)
    assert f'conf_template = "{cni.TEMPLATE_PATH}"' in ours
    assert containerd_config.UPSTREAM_PAUSE in ours and "SystemdCgroup = true" in ours
    external = containerd_config.for_node(lab=True, pod_network=False)
    assert "conf_template" not in external
    assert "3.10-mzk" in external and "restrict_oom_score_adj = true" in external


# --------------------------------------------------------------------------- node checks


def readings(**changes: str) -> checks.Readings:
    values = {"runtime": "ok", "kubelet": "ok", "cgroup": "v2 cpuset cpu io memory pids",
              "cgroup_root": "-", "clock": "1000.5", "ntp": "yes",
              "addresses": "127.0.0.1 10.0.1.20",
              **{f"sysctl.{k}": v for k, v in kc.KERNEL_DEFAULTS.items()}}
    values.update(changes)
    return checks.Readings(values)


def test_a_healthy_node_passes_and_each_fault_is_named() -> None:
    def failures(r: checks.Readings, lab: bool = False) -> list[str]:
        return checks.evaluate(r, "10.0.1.20", lab, 1000.0, 1001.0)

    assert failures(readings()) == []
    assert failures(readings(runtime="no")) == [
        "container runtime socket /run/containerd/containerd.sock missing"]
    assert failures(readings(kubelet="no")) == [
        "kubelet not healthy (127.0.0.1:10248/healthz)"]
    assert failures(readings(**{"sysctl.kernel/panic": "0"})) == [
        "kernel settings: kernel.panic=0 (want 10)"]
    assert failures(readings(cgroup="v2 cpu io")) == [
        "cgroup controllers missing: memory, pids"]
    assert "cgroup v1" in failures(readings(cgroup="v1 cpu memory pids"))[0]
    assert failures(readings(cgroup="v1 cpu memory pids", cgroup_root="/mzk-a-node-1"),
                    lab=True) == []
    assert failures(readings(cgroup="v1 cpu memory pids"), lab=True) == [
        "lab host without its own cgroup root (/etc/mzk/lab-cgroup-root)"]
    assert failures(readings(clock="1010.0")) == ["clock off by +9.5 s (limit 2 s)"]
    assert failures(readings(clock="1001.9")) == []  # within the round trip and the limit
    assert failures(readings(ntp="no")) == [
        "clock not synchronised (timedatectl: NTPSynchronized=no)"]
    assert failures(readings(addresses="127.0.0.1 10.0.9.9")) == [
        "address 10.0.1.20 is on none of the node's interfaces"]


def test_readings_parse_the_node_script_output() -> None:
    text = "nc.runtime ok\nnc.sysctl.vm/overcommit_memory 1\nother line\nnc.addresses a b\n"
    assert checks.Readings.parse(text).values == {
        "runtime": "ok", "sysctl.vm/overcommit_memory": "1", "addresses": "a b"}
    done = subprocess.run(["sh", "-n"], input=checks.SCRIPT, text=True, capture_output=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def node_object(name: str = "node-1", address: str = "10.0.1.20", zone: str = "eu-west-1a",
                ready: str = "True", taint: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {kc.ZONE_LABEL: zone}},
            "spec": {"taints": [{"key": kc.CHECKS_TAINT, "effect": "NoSchedule"}]
                     if taint else []},
            "status": {"conditions": [{"type": "Ready", "status": ready,
                                       "reason": "KubeletReady"}],
                       "addresses": [{"type": "InternalIP", "address": address}]}}


def test_the_api_servers_view_of_a_node_is_checked_against_the_inventory() -> None:
    inventory = inventory_module.load(EXAMPLE)
    host = inventory.nodes[0]
    good = node_object(host.name, host.address, host.zone)
    assert nodes.registration_problems(good, host) == []
    assert nodes.registration_problems(None, host) == ["not registered with the API server"]
    assert nodes.registration_problems(
        node_object(host.name, host.address, host.zone, ready="False"), host) == [
        "not Ready (KubeletReady)"]
    assert "not " + host.address in nodes.registration_problems(
        node_object(host.name, "10.9.9.9", host.zone), host)[0]
    assert nodes.check_phrase([], good, host) == "node checks passed"
    tainted = node_object(host.name, host.address, host.zone, taint=True)
    assert nodes.check_phrase([], tainted, host).endswith("(still tainted: run apply)")
    assert nodes.check_phrase(["kubelet not healthy"], good, host) == (
        "node checks FAILED: kubelet not healthy, PROBLEM")


# --------------------------------------------------------------------------- identity


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab directory with the lab's signing key."""
    lab_dir = tmp_path_factory.mktemp("lab")
    imds.ensure_key(lab_dir)
    return lab_dir


def test_the_lab_cloud_signs_documents_only_its_certificate_verifies(cloud: Path,
                                                                     tmp_path: Path) -> None:
    key = cloud / imds.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((cloud / imds.CLOUD_DIR).stat().st_mode) == 0o700
    before = key.read_bytes(), (cloud / imds.TRUST_FILE).read_text()
    trust = imds.ensure_key(cloud)  # made once: the same key and certificate again
    assert (key.read_bytes(), trust) == before
    instance_id = imds.new_instance_id()
    assert len(instance_id) == 19 and instance_id.startswith("i-")
    int(instance_id[2:], 16)
    document = imds.document(instance_id, "lab-b", "10.213.2.100",
                             dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC))
    fields = json.loads(document)
    assert fields == {"accountId": "000000000000", "architecture": "x86_64",
                      "availabilityZone": "lab-b", "imageId": imds.IMAGE_ID,
                      "instanceId": instance_id, "instanceType": imds.INSTANCE_TYPE,
                      "pendingTime": "2026-12-02T12:00:00Z", "privateIp": "10.213.2.100",
                      "region": "lab", "version": "2017-09-30"}
    signature = imds.sign(cloud, document)
    keys = instance_identity.load_trust(trust.encode())
    assert instance_identity.signature_verifies(document, signature, keys)
    altered = document.replace(b"10.213.2.100", b"10.213.2.101")
    assert not instance_identity.signature_verifies(altered, signature, keys)
    other = tmp_path / "other"
    imds.ensure_key(other)  # another lab's "cloud": its signatures count for nothing here
    assert not instance_identity.signature_verifies(document, imds.sign(other, document), keys)
    imds.remove(other)
    assert not (other / imds.CLOUD_DIR).exists()


class FakeImds(http.server.BaseHTTPRequestHandler):
    """IMDSv2 as EC2 answers: a session token for a PUT with a TTL, GETs only with it."""

    answers: dict[str, bytes] = {}
    session = "AQAEAFake-session=="

    def do_PUT(self) -> None:  # noqa: N802 - the handler's API
        if self.path != "/latest/api/token" or not self.headers.get(
                "X-aws-ec2-metadata-token-ttl-seconds"):
            self.send_error(400)
            return
        self._send(self.session.encode())

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != self.session:
            self.send_error(401)
            return
        body = self.answers.get(self.path.removeprefix("/latest/"))
        if body is None:
            self.send_error(404)
            return
        self._send(body)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def fake_imds(cloud: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    document = imds.document("i-0123456789abcdef0", "eu-west-1a", "10.0.1.5",
                             dt.datetime.now(dt.UTC))
    FakeImds.answers = imds.served(document, imds.sign(cloud, document),
                                   "ip-10-0-1-5.eu-west-1.compute.internal", "10.0.1.5",
                                   "i-0123456789abcdef0")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/latest", FakeImds.answers
    finally:
        server.shutdown()


def run_identity(lines: list[str], tmp_path: Path, kubeconfig: str) -> dict[str, str]:
    script = "\n".join(["set -eu", *lines, kubeconfig,
                        'printf "%s\\n%s\\n%s\\n" "$name" "$address" "$token"'])
    done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True,
                          check=False, timeout=30, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    name, address, token = done.stdout.splitlines()
    return {"name": name, "address": address, "token": token}


def test_on_aws_the_token_is_built_from_the_imdsv2_document_and_signature(
        fake_imds: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    url, answers = fake_imds
    lines = [line.replace(join.IMDS, url) for line in join.identity_script(spec())]
    path = tmp_path / "bootstrap-kubelet.conf"
    got = run_identity(lines, tmp_path, join.kubeconfig_script(spec(), str(path)))
    signature = base64.b64decode(answers[imds.SIGNATURE])
    assert got["token"] == instance_identity.identity_token(answers[imds.DOCUMENT], signature)
    assert instance_identity.parse_identity_token(got["token"]) == (
        answers[imds.DOCUMENT], signature)  # the exact bytes EC2 signed
    assert got["name"] == "ip-10-0-1-5.eu-west-1.compute.internal"
    assert got["address"] == "10.0.1.5"
    # The kubeconfig: 0600, the token as its only credential; the temp files are gone.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = yaml.safe_load(path.read_bytes())
    assert config["users"][0]["user"] == {"token": got["token"]}
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]
                            ).decode() == spec().ca_pem
    assert os.listdir(tmp_path) == [path.name]


def test_without_the_imds_session_nothing_is_read(fake_imds: tuple[str, dict[str, bytes]],
                                                  tmp_path: Path) -> None:
    url, _answers = fake_imds
    lines = [line.replace(join.IMDS, url).replace("-X PUT", "-X GET")  # no session token
             for line in join.identity_script(spec())]
    script = "\n".join(["set -eu", *lines, 'echo "$token"'])
    done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode != 0 and "mzk-iid." not in done.stdout


def test_in_the_lab_the_token_comes_from_the_hosts_own_imds_files(cloud: Path,
                                                                  tmp_path: Path) -> None:
    document = imds.document("i-0000000000000000a", "lab-b", "10.213.2.100",
                             dt.datetime.now(dt.UTC))
    signature = imds.sign(cloud, document)
    root = tmp_path / "host"
    imds.place(root, imds.served(document, signature, "auto-b1", "10.213.2.100",
                                 "i-0000000000000000a"))
    where = root / imds.HOST_DIR.lstrip("/")
    for directory in (where, *(d for d in where.rglob("*") if d.is_dir())):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((where / imds.DOCUMENT).stat().st_mode) == 0o600
    assert imds.read(root)[imds.DOCUMENT] == document
    lab = spec(lab=True, imds_dir=str(where), kubelet_path="/k", cgroup_root="/x")
    out = tmp_path / "kubeconfig"
    got = run_identity(join.identity_script(lab), tmp_path, join.kubeconfig_script(lab, str(out)))
    assert got == {"name": "auto-b1", "address": "10.213.2.100",
                   "token": instance_identity.identity_token(document, signature)}
    # An impostor's claim changes the name it asks for, never the identity it presents.
    claimed = run_identity(join.identity_script(dataclasses.replace(lab, claim="node-1")),
                           tmp_path, "")
    assert claimed == {**got, "name": "node-1"}


def approver_context(tmp_path: Path, lab: bool, trust: str | None = None, zones: str = "",
                     facts: dict[str, Any] | None = None) -> HostContext:
    data = {**yaml.safe_load(EXAMPLE.read_text()),
            "node_pools": [{"name": "pool-a", "zone": "eu-west-1a"}]}
    data["pki"]["key_type"] = "ecdsa"
    if trust is not None:
        data["cluster"]["instance_identity_trust"] = trust
    if zones:
        for zone in data["zones"]:
            zone["name"] = zone["name"].replace("eu-west-1", zones)
        for host in data["hosts"]:
            host["zone"] = host["zone"].replace("eu-west-1", zones)
        data["node_pools"][0]["zone"] = f"{zones}a"
        data["endpoints"]["zones"] = {k.replace("eu-west-1", zones): v
                                      for k, v in data["endpoints"]["zones"].items()}
    inventory = inventory_module.parse(data)
    pki = generate(inventory, tmp_path / "pki")
    return HostContext(host=inventory.host("cp-a"), runner=None,  # type: ignore[arg-type]
                       inventory=inventory, dry_run=False, shared={"pki": pki},
                       facts={"lab": lab, "bin": {"python3": "/usr/bin/python3"},
                              **(facts or {})})


def test_the_approver_serves_the_webhook_on_loopback_and_trusts_the_inventorys_key(
        cloud: Path, tmp_path: Path) -> None:
    trust = (cloud / imds.TRUST_FILE).read_text()
    ctx = approver_context(tmp_path, lab=True, trust=trust)
    assert node_join.identity_trust(ctx.inventory) == trust.encode()
    command = node_join.approver_service(ctx, trust.encode()).command_line
    flags = dict(zip(command[2::2], command[3::2], strict=False))
    assert flags["--webhook-listen"] == "127.0.0.1:10262"
    assert flags["--identity-trust"] == node_join.TRUST_FILE
    assert flags["--identity"] == f"lab:{node_join.LAB_RECORD}"
    # The modules the approver imports are shipped beside it, and watched by the facts.
    shipped = node_join.program_files()
    for name in ("instance_identity", "identity_webhook"):
        assert shipped[f"/var/lib/mzk/bin/{name}.py"] == (
            Path(join.__file__).parent / f"{name}.py").read_bytes()
    assert set(node_join.watched_paths(ctx)) == {
        *shipped, node_join.TRUST_FILE, unit_path(node_join.APPROVER)}
    # A new trust is a new service definition (the approver restarts with it).
    other = node_join.approver_service(ctx, b"other")
    assert other.env != node_join.approver_service(ctx, trust.encode()).env


def test_on_aws_the_approver_trusts_the_regions_pinned_certificate(tmp_path: Path) -> None:
    ctx = approver_context(tmp_path, lab=False, zones="us-east-1")
    pem = node_join.identity_trust(ctx.inventory)
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert instance_identity.load_trust(pem)
    assert node_join.identity_source(ctx.inventory, False) == "ec2:us-east-1:mz-example"
    with pytest.raises(StepError, match="ap-nowhere-9"):
        node_join.identity_trust(approver_context(tmp_path / "x", lab=False,
                                                  zones="ap-nowhere-9").inventory)


def test_a_converged_approver_costs_no_round_trip(cloud: Path, tmp_path: Path) -> None:
    trust = (cloud / imds.TRUST_FILE).read_text()
    probe = approver_context(tmp_path, lab=True, trust=trust)
    service = node_join.approver_service(probe, trust.encode())
    unit = render_unit(service).encode()
    states = {f.path: f.state() for f in (
        *(FileSpec(p, c, 0o755 if p == node_join.PROGRAM else 0o644)
          for p, c in node_join.program_files().items()),
        FileSpec(node_join.TRUST_FILE, trust.encode(), 0o644),
        FileSpec(unit_path(node_join.APPROVER), unit, 0o644))}
    running = ServiceStatus(True, hashlib.sha256(unit).hexdigest())
    ctx = approver_context(tmp_path / "again", lab=True, trust=trust, facts={
        "file_states": states, "services": {node_join.APPROVER: running}})
    ctx.shared["pki"] = probe.shared["pki"]
    node_join.converge_approver(ctx)  # runner None: any command would fail
    assert ctx.changes == []
    states[node_join.TRUST_FILE] = "0" * 64 + " 644 root root"  # a trust file changed by hand
    ctx = approver_context(tmp_path / "third", lab=True, trust=trust, facts={
        "file_states": states, "services": {node_join.APPROVER: running}})
    ctx.shared["pki"] = probe.shared["pki"]
    ctx.dry_run = True
    node_join.converge_approver(ctx)
    assert ctx.changes == [f"write {node_join.TRUST_FILE}",
                           f"restart {node_join.APPROVER} (new program or trust)"]


def test_verified_instances_may_only_request_certificates() -> None:
    inventory = inventory_module.parse({**yaml.safe_load(EXAMPLE.read_text()), "node_pools": [
        {"name": "pool-a", "zone": "eu-west-1a"}, {"name": "pool-b", "zone": "eu-west-1b"}]})
    role, binding, bootstrappers = node_join.wanted_objects(inventory)
    for obj in (role, binding, bootstrappers):
        kubernetes_validate.validate(obj, "1.33", strict=True)
    assert bootstrappers["roleRef"]["name"] == "system:node-bootstrapper"
    assert [s["name"] for s in bootstrappers["subjects"]] == [
        "system:bootstrappers:mzk:pool-a", "system:bootstrappers:mzk:pool-b"]
    assert binding["subjects"][0]["name"] == "mzk:csr-approver"
    assert binding["metadata"]["annotations"][node_join.RULES_DIGEST]


# --------------------------------------------------------------------------- user data


def spec(**changes: Any) -> join.JoinSpec:
    values: dict[str, Any] = dict(
        pool="pool-b", zone="lab-b", endpoint_url="https://api-b.lab.internal:6443",
        ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        kubernetes_version="1.36.0", dns_address="10.96.0.10", dns_domain="cluster.local")
    values.update(changes)
    return join.JoinSpec(**values)


def test_the_user_data_is_valid_shell_writing_the_files_atomically() -> None:
    for s in (spec(), spec(lab=True, kubelet_path="/cache/kubelet",
                           cgroup_root="/mzk-x-auto-b1")):
        script = join.user_data(s)
        done = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        for path, _content, _mode in [*join.files(s), (kc.BOOTSTRAP_KUBECONFIG, b"", 0)]:
            assert f"mv -f {path}.mzk-tmp {path}" in script
        # Nothing secret in it: the identity token is made on the node, at boot.
        assert not re.search(r"^\s*token:", script, re.M)
        assert not re.search(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b", script)
    real = join.user_data(spec())
    assert "meta-data/local-hostname" in real and "X-aws-ec2-metadata-token" in real
    assert "apt-get install -y -q containerd runc containernetworking-plugins" in real
    assert "systemctl enable --now kubelet.service" in real
    lab = join.user_data(spec(lab=True, kubelet_path="/cache/kubelet",
                              cgroup_root="/mzk-x-auto-b1"))
    assert "169.254.169.254" not in lab and "apt-get" not in lab
    assert f"cat {join.LAB_IMDS}/" in lab


def test_a_name_or_address_that_is_not_one_stops_the_join(tmp_path: Path) -> None:
    lab = spec(lab=True, imds_dir=str(tmp_path), kubelet_path="/k", cgroup_root="/x")
    for name, address, ok in (("auto-b1", "10.213.2.100", True),
                              ("x/../../etc", "10.213.2.100", False),
                              ("auto-b1", "10.0.0.1; rm -rf /", False), ("", "10.0.0.1", False)):
        (tmp_path / "meta-data").mkdir(exist_ok=True)
        (tmp_path / "meta-data" / "local-hostname").write_text(name)
        (tmp_path / "meta-data" / "local-ipv4").write_text(address)
        lines = join.user_data(lab).split("\n")
        check = next(i for i, line in enumerate(lines) if "no usable name" in line)
        head = [line for line in lines[:check + 1] if line.startswith(("set ", "imds()", "name=",
                                                                      "address=", "case ",
                                                                      "[ \"$name_ok"))]
        done = subprocess.run(["sh", "-s"], input="\n".join(head) + "\necho passed\n",
                              capture_output=True, text=True, check=False)
        assert ("passed" in done.stdout) is ok, (name, address, done.stderr)


def test_the_bootstrap_kubeconfig_names_the_ca_and_the_zone_endpoint() -> None:
    token = instance_identity.identity_token(b"{}", b"signature")
    config = yaml.safe_load(join.bootstrap_kubeconfig(spec(), token))
    assert config["users"][0]["user"] == {"token": token}
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://api-b.lab.internal:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]).decode() == spec().ca_pem
    files = {path: (content, mode) for path, content, mode in join.files(spec())}
    assert kc.BOOTSTRAP_KUBECONFIG not in files  # written on the node, with its token
    kubelet = yaml.safe_load(files[kc.CONFIG_PATH][0])
    assert kubelet["serverTLSBootstrap"] is True and kubelet["readOnlyPort"] == 0
    unit = files["/etc/systemd/system/kubelet.service"][0].decode()
    assert join.NAME_MARK in unit and join.ADDRESS_MARK in unit


# --------------------------------------------------------------------------- inventory


def with_pools(pools: Any) -> dict[str, Any]:
    return {**yaml.safe_load(EXAMPLE.read_text()), "node_pools": pools}


def test_node_pools_are_read_and_bad_ones_named_in_one_line() -> None:
    inventory = inventory_module.parse(with_pools([
        {"name": "pool-a", "zone": "eu-west-1a"}]))
    assert inventory.node_pools == (NodePool("pool-a", "eu-west-1a"),)
    assert inventory_module.parse(with_pools([])).node_pools == ()
    for pools, field in (([{"name": "Pool A", "zone": "eu-west-1a"}], "node_pools[0].name"),
                         ([{"name": "p", "zone": "mars-1a"}], "node_pools[0].zone"),
                         ([{"name": "p", "zone": ["eu-west-1a"]}], "node_pools[0].zone"),
                         ([{"name": "p", "zone": "eu-west-1a", "join_token_hours": 24}],
                          "node_pools[0].join_token_hours: no longer used"),
                         ([{"name": "p", "zone": "eu-west-1a", "size": 3}],
                          "node_pools[0]"),
                         ([{"name": "p", "zone": "eu-west-1a"}] * 2, "node_pools[1].name"),
                         ("pool-a", "node_pools")):
        with pytest.raises(ConfigError) as err:
            inventory_module.parse(with_pools(pools))
        assert field in str(err.value) and "\n" not in str(err.value), (pools, err.value)


def test_the_identity_trust_is_pem_certificates_or_rsa_keys_named_in_one_line(
        cloud: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = (cloud / imds.TRUST_FILE).read_text()
    spki = instance_identity_public_key(cert)

    def with_trust(value: Any) -> dict[str, Any]:
        data = yaml.safe_load(EXAMPLE.read_text())
        data["cluster"]["instance_identity_trust"] = value
        return data

    for good in (cert, spki, cert + spki):
        assert inventory_module.parse(with_trust(good)).cluster.instance_identity_trust == good
    assert inventory_module.parse(yaml.safe_load(EXAMPLE.read_text())
                                  ).cluster.instance_identity_trust is None
    ec_key = ec.generate_private_key(ec.SECP256R1())
    private = (cloud / imds.KEY_FILE).read_text()
    ec_public = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    broken = cert.replace(cert.splitlines()[3], "A" * 64)
    for bad, says in (("not pem", "no PEM block"), (["a"], "a list"),
                      (private, "private key"), (ec_public, "elliptic-curve key"),
                      (broken, "does not parse")):
        with pytest.raises(ConfigError) as err:
            inventory_module.parse(with_trust(bad))
        message = str(err.value)
        assert "cluster.instance_identity_trust" in message and says in message, message
        assert "\n" not in message


def instance_identity_public_key(cert_pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate(cert_pem.encode()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
