"""Nodes without a lab: the kubelet's configuration, node checks, join tokens, the user data
of joined nodes, the RBAC for joining, and the inventory's node pools."""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bootstrap import inventory as inventory_module
from bootstrap.errors import ConfigError
from bootstrap.inventory import NodePool
from bootstrap.node import checks, cni, containerd_config, join, join_tokens
from bootstrap.node import kubelet_config as kc
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


# --------------------------------------------------------------------------- join tokens


def test_a_token_is_due_when_missing_or_past_half_its_life() -> None:
    token = join_tokens.new("pool-a", 24, T0)
    assert token.expires == T0 + dt.timedelta(hours=24)
    assert len(token.token_id) == 6 and len(token.secret) == 16
    assert join_tokens.due(None, 24, T0)
    assert not join_tokens.due(token, 24, T0 + dt.timedelta(hours=11, minutes=59))
    assert join_tokens.due(token, 24, T0 + dt.timedelta(hours=12, minutes=1))


def test_refresh_keeps_fresh_tokens_issues_due_ones_and_drops_unlisted_pools() -> None:
    pools = [NodePool("pool-a", "lab-a"), NodePool("pool-b", "lab-b", 4)]
    fresh = join_tokens.new("pool-a", 24, T0)
    stale = join_tokens.new("pool-b", 4, T0 - dt.timedelta(hours=3))
    gone = join_tokens.new("pool-z", 24, T0)
    tokens, issued = join_tokens.refresh(pools, {"pool-a": fresh, "pool-b": stale,
                                                 "pool-z": gone}, T0)
    assert issued == ["pool-b"]
    assert tokens["pool-a"] == fresh and tokens["pool-b"] != stale
    assert set(tokens) == {"pool-a", "pool-b"}


def test_the_store_is_private_and_a_damaged_one_holds_nothing(tmp_path: Path) -> None:
    token = join_tokens.new("pool-a", 24, T0)
    join_tokens.save(tmp_path, {"pool-a": token})
    path = tmp_path / join_tokens.STORE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert join_tokens.load(tmp_path) == {"pool-a": token}
    path.write_text('{"pool-a": {"id": "BAD!", "secret": "x", "expires": "y"}}')
    assert join_tokens.load(tmp_path) == {}
    path.write_text("not json")
    assert join_tokens.load(tmp_path) == {}


def test_the_token_secret_is_what_the_api_server_reads_for_bootstrap_tokens() -> None:
    token = join_tokens.new("pool-a", 24, T0)
    manifest = token.manifest()
    kubernetes_validate.validate(manifest, "1.33", strict=True)
    data = manifest["stringData"]
    assert manifest["type"] == "bootstrap.kubernetes.io/token"
    assert manifest["metadata"] == {"name": f"bootstrap-token-{token.token_id}",
                                    "namespace": "kube-system",
                                    "labels": {"mzk.io/node-pool": "pool-a"}}
    assert data["usage-bootstrap-authentication"] == "true"
    assert "usage-bootstrap-signing" not in data
    assert data["auth-extra-groups"] == "system:bootstrappers:mzk:pool-a"
    assert data["expiration"] == "2026-12-03T12:00:00Z"


def test_token_holders_may_only_request_certificates() -> None:
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
        token="abcdef.0123456789abcdef", kubernetes_version="1.36.0",  # noqa: S106
        dns_address="10.96.0.10", dns_domain="cluster.local")
    values.update(changes)
    return join.JoinSpec(**values)


def test_the_user_data_is_valid_shell_writing_the_files_atomically() -> None:
    for s in (spec(), spec(lab=True, node_name="auto-b1", node_address="10.213.2.100",
                           kubelet_path="/cache/kubelet", cgroup_root="/mzk-x-auto-b1")):
        script = join.user_data(s)
        done = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        for path, _content, _mode in join.files(s):
            assert f"mv -f {path}.mzk-tmp {path}" in script
    real = join.user_data(spec())
    assert "meta-data/local-hostname" in real and "X-aws-ec2-metadata-token" in real
    assert "apt-get install -y -q containerd runc containernetworking-plugins" in real
    assert "systemctl enable --now kubelet.service" in real
    lab = join.user_data(spec(lab=True, node_name="auto-b1", node_address="10.213.2.100",
                              kubelet_path="/cache/kubelet", cgroup_root="/mzk-x-auto-b1"))
    assert "169.254.169.254" not in lab and "apt-get" not in lab
    assert "name=auto-b1" in lab


def test_the_bootstrap_kubeconfig_holds_the_token_the_ca_and_the_zone_endpoint() -> None:
    files = {path: (content, mode) for path, content, mode in join.files(spec())}
    content, mode = files[kc.BOOTSTRAP_KUBECONFIG]
    config = yaml.safe_load(content)
    assert mode == 0o600
    assert config["users"][0]["user"]["token"] == spec().token
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://api-b.lab.internal:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]).decode() == spec().ca_pem
    kubelet = yaml.safe_load(files[kc.CONFIG_PATH][0])
    assert kubelet["serverTLSBootstrap"] is True and kubelet["readOnlyPort"] == 0
    unit = files["/etc/systemd/system/kubelet.service"][0].decode()
    assert join.NAME_MARK in unit and join.ADDRESS_MARK in unit


# --------------------------------------------------------------------------- inventory


def with_pools(pools: Any) -> dict[str, Any]:
    return {**yaml.safe_load(EXAMPLE.read_text()), "node_pools": pools}


def test_node_pools_are_read_and_bad_ones_named_in_one_line() -> None:
    inventory = inventory_module.parse(with_pools([
        {"name": "pool-a", "zone": "eu-west-1a", "join_token_hours": 6}]))
    assert inventory.node_pools == (NodePool("pool-a", "eu-west-1a", 6),)
    assert inventory_module.parse(with_pools([])).node_pools == ()
    for pools, field in (([{"name": "Pool A", "zone": "eu-west-1a"}], "node_pools[0].name"),
                         ([{"name": "p", "zone": "mars-1a"}], "node_pools[0].zone"),
                         ([{"name": "p", "zone": ["eu-west-1a"]}], "node_pools[0].zone"),
                         ([{"name": "p", "zone": "eu-west-1a", "join_token_hours": 0}],
                          "node_pools[0].join_token_hours"),
                         ([{"name": "p", "zone": "eu-west-1a"}] * 2, "node_pools[1].name"),
                         ("pool-a", "node_pools")):
        with pytest.raises(ConfigError) as err:
            inventory_module.parse(with_pools(pools))
        assert field in str(err.value) and "\n" not in str(err.value), (pools, err.value)
