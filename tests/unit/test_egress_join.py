"""The egress path of auto-scaled nodes: what their user data gives them in `konnectivity`
mode (the firewall before the kubelet, the agent with the kubelet's own credential), that it
is the inventory nodes' definition, and that the user data holds nothing private."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from bootstrap.egress import firewall, hostconfig, konnectivity_release
from bootstrap.inventory import load, parse
from bootstrap.node import join
from bootstrap.node import kubelet_config as kc
from bootstrap.pki import generate, kubeconfig
from bootstrap.pki.table import CA_BY_NAME, KUBELET_CLIENT_PEM, flags_for
from bootstrap.services import render_unit, unit_path
from bootstrap.steps import egress, egress_nodes

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inventory.yaml"
CP = ("10.213.1.10", "10.213.2.10", "10.213.3.10")
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KCA = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"


def spec(**changes: Any) -> join.JoinSpec:
    values: dict[str, Any] = dict(
        pool="pool-b", zone="lab-b", endpoint_url="https://api-b.lab.internal:6443",
        ca_pem=CA, kubernetes_version="1.36.0", dns_address="10.96.0.10",
        dns_domain="cluster.local", konnectivity_ca_pem=KCA,
        agent_server="api-b.lab.internal", control_plane=CP)
    values.update(changes)
    return join.JoinSpec(**values)


LAB: dict[str, Any] = dict(lab=True, kubelet_path="/cache/kubelet", agent_path="/cache/proxy-agent",
           cgroup_root="/mzk-x-auto-b1")


def line_of(lines: list[str], needle: str) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


@pytest.mark.parametrize("lab", [False, True])
def test_konnectivity_user_data_loads_the_firewall_before_the_kubelet_then_the_agent(
        lab: bool) -> None:
    s = spec(**LAB) if lab else spec()
    script = join.user_data(s)
    done = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    files = {path: content for path, content, _mode in join.files(s)}
    # The inventory nodes' ruleset, for the inventory's control-plane addresses: nothing
    # from them, not even SSH.
    rules = files[firewall.RULES_FILE]
    assert rules == firewall.ruleset(list(CP), 22, allow_ssh=False)
    assert b"tcp dport" not in rules and all(a.encode() in rules for a in CP)
    assert files[join.KONNECTIVITY_CA] == KCA.encode()
    lines = script.split("\n")
    load = (line_of(lines, firewall.LOAD) if lab
            else line_of(lines, f"systemctl enable --now {firewall.UNIT}.service"))
    kubelet = line_of(lines, "started its kubelet") - 1
    containerd = lines.index(join._start("containerd", lab))
    assert load < containerd < kubelet < line_of(lines, "started its Konnectivity agent")
    start = lines[line_of(lines, "started its Konnectivity agent") - 1]
    assert hostconfig.PROXY_AGENT in start
    assert ("mzk-supervise" in start) is lab and ("systemctl" in start) is not lab
    # The agent's name and address are filled in on the node, as the kubelet's.
    sed = lines[line_of(lines, "s/@NODE_NAME@/$name/g")]
    assert unit_path(hostconfig.PROXY_AGENT) in sed and unit_path("kubelet") in sed
    if lab:
        assert firewall.UNIT_FILE not in files and "apt-get" not in script
    else:
        assert files[firewall.UNIT_FILE] == firewall.BOOT_UNIT
        assert "nftables" in join.PACKAGES
        digest = konnectivity_release.pinned_digest("proxy-agent", "0.36.0")
        assert f"pinned={digest}" in script  # the pinned image, checked layer by layer


def test_the_agent_is_the_inventory_nodes_definition() -> None:
    inventory = load(EXAMPLE)
    node = inventory.nodes[0]
    ours = hostconfig.proxy_agent_command(inventory, node, "/usr/local/bin/proxy-agent")
    unit = {p: c for p, c, _ in join.files(spec())}[unit_path(hostconfig.PROXY_AGENT)].decode()
    joined = hostconfig.agent_command("/usr/local/bin/proxy-agent", join.NAME_MARK,
                                      f"host={join.NAME_MARK}&ipv4={join.ADDRESS_MARK}",
                                      "api-b.lab.internal")
    assert unit == render_unit(join.agent_service(spec()))
    assert join.agent_service(spec()).command_line == tuple(joined)
    differ = {"--agent-id", "--agent-identifiers", "--proxy-server-host"}

    def same(words: list[str]) -> list[str]:
        return [w for w in words if w.partition("=")[0] not in differ]

    assert same(ours) == same(joined)
    assert f"--agent-identifiers=host={node.name}&ipv4={node.address}" in ours
    endpoint = inventory.zone(node.zone).endpoint.name
    assert f"--proxy-server-host={endpoint}" in ours
    # Its credential: the kubelet's client certificate, the same file on every node.
    assert f"--agent-cert={KUBELET_CLIENT_PEM}" in ours
    assert f"--agent-key={KUBELET_CLIENT_PEM}" in ours
    assert f"--ca-cert={CA_BY_NAME['konnectivity-ca'].cert_path}" in ours
    assert ours[:5] == ["/bin/sh", "-c", hostconfig.AGENT_START, "mzk-agent-start",
                        KUBELET_CLIENT_PEM]


def test_proxy_servers_verify_agents_against_the_cluster_ca() -> None:
    inventory = load(EXAMPLE)
    host = inventory.control_plane[0]
    words = hostconfig.proxy_server_command(inventory, host, "/usr/local/bin/proxy-server")
    assert f"--cluster-ca-cert={CA_BY_NAME['kubernetes-ca'].cert_path}" in words
    assert not [w for w in words if w.startswith("--cluster-ca-cert=")
                and "konnectivity" in w]
    assert flags_for("proxy-server")["--cluster-cert"].endswith("konnectivity/server.crt")


def test_without_konnectivity_there_is_no_agent_and_no_firewall() -> None:
    plain = spec(konnectivity_ca_pem=None, agent_server="", control_plane=())
    paths = {p for p, _, _ in join.files(plain)}
    assert not paths & {firewall.RULES_FILE, firewall.UNIT_FILE, join.KONNECTIVITY_CA,
                        unit_path(hostconfig.PROXY_AGENT)}
    script = join.user_data(plain)
    assert "proxy-agent" not in script and firewall.UNIT not in script
    assert firewall.LOAD not in join.user_data(dataclasses.replace(plain, **LAB))


def test_the_user_data_holds_nothing_private() -> None:
    for s in (spec(), spec(**LAB)):
        script = join.user_data(s)
        assert "PRIVATE KEY" not in script
        for _path, content, _mode in join.files(s):
            assert b"PRIVATE KEY" not in content
        assert not re.search(r"^\s*token:", script, re.M)
        # Only public certificates travel: the cluster CA and the Konnectivity CA.
        files = {p: c for p, c, _ in join.files(s)}
        assert files[join.KONNECTIVITY_CA] == KCA.encode()


def run_start(tmp_path: Path, poll: str = "0.1", drains: bool = False
              ) -> tuple[subprocess.Popen[str], Path, Path]:
    """The agent's start with a fake agent that logs its start and its end (or, `drains`,
    that ignores TERM as the proxy-agent draining its connections may for ever)."""
    cred, log = tmp_path / "cred.pem", tmp_path / "agent.log"
    agent = tmp_path / "agent"
    on_term = f"echo draining >> {log}" if drains else f"echo ended >> {log}; exit 0"
    agent.write_text(f"#!/bin/sh\necho started \"$@\" $$ >> {log}\n"
                     f"trap '{on_term}' TERM\n"
                     "while :; do sleep 0.05; done\n")
    agent.chmod(0o755)
    start = hostconfig.AGENT_START.replace(f"sleep {hostconfig.CREDENTIAL_CHECK_S} ",
                                           f"sleep {poll} ")
    assert start != hostconfig.AGENT_START
    proc = subprocess.Popen(["sh", "-c", start, "mzk-agent-start", str(cred), str(agent),
                             "--flag"], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return proc, cred, log


def until(what: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_the_agent_waits_for_the_credential_and_restarts_when_it_changes(
        tmp_path: Path) -> None:
    proc, cred, log = run_start(tmp_path)
    try:
        time.sleep(1.2)
        assert not log.exists() and proc.poll() is None  # no credential yet: waits
        cred.write_text("one")
        until(lambda: log.exists() and "started --flag" in log.read_text())
        time.sleep(0.5)
        assert proc.poll() is None  # unchanged: keeps running
        cred.write_text("two")  # rotated: the agent ends, the keeper starts it again
        assert proc.wait(timeout=5) == 0
        assert [line.rsplit(" ", 1)[0] if line.startswith("started") else line
                for line in log.read_text().splitlines()] == ["started --flag", "ended"]
        assert "changed: restarting with it" in (proc.stdout.read() if proc.stdout else "")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stopping_the_agents_start_stops_the_agent(tmp_path: Path) -> None:
    proc, cred, log = run_start(tmp_path)
    cred.write_text("one")
    try:
        until(lambda: log.exists() and "started" in log.read_text())
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 143
        until(lambda: "ended" in log.read_text())  # no agent left behind
    finally:
        if proc.poll() is None:
            proc.kill()


def test_inventory_nodes_get_their_kubelets_credential_for_the_agent(tmp_path: Path) -> None:
    inventory = load(EXAMPLE)
    result = generate(inventory, tmp_path / "pki")
    node = inventory.nodes[0]
    ctx = SimpleNamespace(name=node.name, shared={"pki": result})
    found = egress_nodes.credential(ctx)  # type: ignore[arg-type]
    assert found.path == KUBELET_CLIENT_PEM and found.mode == 0o600
    conf = {f.path: f.content for f in result.hosts[node.name].files}[kc.KUBECONFIG]
    cert, key = kubeconfig.credentials(conf)
    assert found.content.startswith(cert.strip()) and found.content.endswith(key)
    assert b"PRIVATE KEY" in found.content and b"CN=" not in found.content


def test_check_counts_ready_auto_scaled_nodes_in_konnectivity_mode(tmp_path: Path) -> None:
    inventory = load(EXAMPLE)
    fake = tmp_path / "kubectl"
    fake.write_text("#!/bin/sh\nprintf 'node-a1 True\\nauto-b1 True\\nauto-c1 False\\n'\n")
    fake.chmod(0o755)
    host = inventory.control_plane[0]
    first = egress.check_script(inventory, host, kubectl=str(fake)).splitlines()[0]
    out = subprocess.run(["sh", "-c", first], capture_output=True, text=True, check=True)
    inventory_nodes = len([h for h in inventory.nodes if h.name != host.name])
    assert out.stdout == f"egress konnectivity {inventory_nodes + 1}\n"  # auto-b1 only
    tunnel = dataclasses.replace(inventory, cluster=dataclasses.replace(
        inventory.cluster, egress="ssh-tunnel"))
    first = egress.check_script(tunnel, host, kubectl=str(fake)).splitlines()[0]
    assert first == f'echo "egress ssh-tunnel {inventory_nodes}"'


def test_the_lab_example_inventory_is_in_konnectivity_mode() -> None:
    """The default the auto-scaled nodes' egress follows (cluster.egress)."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["cluster"].pop("egress", None)
    assert parse(raw, source="test").cluster.egress == "konnectivity"


def test_the_agents_unit_reads_back_as_its_command_line() -> None:
    """systemd's and the lab supervisor's reading of ExecStart (`$` doubled, quotes)."""
    from bootstrap.lab import supervise

    service = join.agent_service(spec())
    parsed = supervise.parse_unit(render_unit(service))
    assert parsed["command_line"] == list(service.command_line)
    assert "$$" in render_unit(service)  # systemd would expand a single `$`


def test_an_agent_that_does_not_end_on_term_is_killed(tmp_path: Path) -> None:
    proc, cred, log = run_start(tmp_path, drains=True)
    cred.write_text("one")
    try:
        until(lambda: log.exists() and "started" in log.read_text())
        pid = int(log.read_text().split()[-1])
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=hostconfig.AGENT_STOP_S + 5) == 143
        assert "draining" in log.read_text()  # it was asked first
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # then killed: nothing outlives the start
    finally:
        if proc.poll() is None:
            proc.kill()
