"""Steps and the engine against in-memory hosts (no network): each step's second run has
nothing to do, a dry run changes nothing, failed hosts are named and left out."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import shlex
from pathlib import Path

import pytest
import yaml

from bootstrap import steps
from bootstrap.egress import konnectivity_release
from bootstrap.engine import ActionFailed, HostContext, Step, all_hosts, run_steps
from bootstrap.errors import StepError
from bootstrap.inventory import parse
from bootstrap.k8s_bin import LocalBinaries
from bootstrap.pki import generate
from bootstrap.runner import Result
from bootstrap.services import render_unit
from bootstrap.steps import binaries, etcd, facts, pki, preflight
from tests.unit.fakes import FakeFile, FakeRunner

ROOT = Path(__file__).resolve().parents[2]


class FakeHost(FakeRunner):
    """FakeRunner plus the batched file calls of bootstrap.hostfiles, over its memory, and
    `rm -f -- PATHS` carried out on it."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)

        def rm(command: str, _stdin: bytes | None) -> Result:
            for path in shlex.split(command)[3:]:
                self.files.pop(path, None)
            return Result(0, "", "")

        self.on("rm -f -- ", handler=rm)

    def stat_many(self, paths):
        out = {}
        for path in paths:
            f = self.files.get(path)
            out[path] = None if f is None else (
                f"{hashlib.sha256(f.content).hexdigest()} {f.mode:o} {f.owner} {f.group}")
        return out

    def put_many(self, files):
        for f in files:
            self.files[f.path] = FakeFile(f.content, f.mode, f.owner, f.group)
            self.writes.append(f.path)


def inventory(ca_keys_on_hosts: bool = True):
    data = yaml.safe_load((ROOT / "examples" / "inventory.yaml").read_text())
    data["pki"]["key_type"] = "ecdsa"
    data["pki"]["ca_keys_on_hosts"] = ca_keys_on_hosts
    return parse(copy.deepcopy(data), source="test")


def context(inv, name, runner, dry_run=False, shared=None, facts_=None):
    return HostContext(host=inv.host(name), runner=runner, inventory=inv, dry_run=dry_run,
                       shared=shared or {}, facts=facts_ or {})


FACTS_OUTPUT = """kernel Linux 6.1.0
arch x86_64
uid 0
lab 1
systemd 0
time {now}
bin.etcd /usr/bin/etcd
bin.etcdctl /usr/bin/etcdctl
bin.python3 /usr/bin/python3
bin.sha256sum /usr/bin/sha256sum
bin.base64 /usr/bin/base64
bin.mktemp /usr/bin/mktemp
bin.stat /usr/bin/stat
bin.setsid /usr/bin/setsid
bin.curl -
bin.tar /usr/bin/tar
etcd_version 3.4.23
free_kb 5000000
"""


# --------------------------------------------------------------------------- facts, preflight


def test_facts_parser():
    parsed = facts.parse(FACTS_OUTPUT.format(now=1700000000))
    assert parsed["kernel"] == "Linux 6.1.0"
    assert parsed["lab"] is True and parsed["systemd"] is False
    assert parsed["bin"]["etcd"] == "/usr/bin/etcd" and parsed["bin"]["curl"] is None
    assert parsed["time"] == 1700000000 and parsed["free_kb"] == 5000000
    assert parsed["etcd_version"] == "3.4.23"


def test_preflight_accepts_a_good_host_and_names_each_problem():
    good = facts.parse(FACTS_OUTPUT.format(now=1000))
    assert preflight.problems(good, etcd=True, now=1000) == []
    bad = copy.deepcopy(good)
    bad["time"] = 1000 + 3600
    bad["bin"]["base64"] = None
    bad["lab"] = False
    bad["free_kb"] = 10
    found = preflight.problems(bad, etcd=True, now=1000)
    assert any("clock is off by 3600 s" in p for p in found)
    assert any("missing commands base64" in p for p in found)
    assert any("no systemd" in p for p in found)
    assert any("etcd needs 1 GiB" in p for p in found)
    assert preflight.problems(bad, etcd=False, now=1000 + 3600) != []


def test_preflight_step_raises_naming_the_host():
    inv = inventory()
    bad = facts.parse(FACTS_OUTPUT.format(now=0))
    ctx = context(inv, "cp-a", FakeHost("cp-a"), facts_=bad)
    with pytest.raises(StepError, match=r"^cp-a: preflight: clock is off"):
        preflight.check(ctx)


# --------------------------------------------------------------------------- binaries


def test_binaries_lab_uses_the_machines_etcd_and_changes_nothing():
    inv = inventory()
    host = FakeHost("cp-a", strict=True)
    ctx = context(inv, "cp-a", host, facts_=facts.parse(FACTS_OUTPUT.format(now=0)))
    binaries.ensure_etcd(ctx)
    assert ctx.facts["etcd"] == "/usr/bin/etcd" and ctx.changes == [] and host.commands == []


def test_binaries_real_host_installs_the_pinned_release_once():
    inv = inventory()
    real = facts.parse(FACTS_OUTPUT.format(now=0).replace("lab 1", "lab 0")
                       .replace("systemd 0", "systemd 1").replace("bin.curl -",
                                                                   "bin.curl /usr/bin/curl"))
    host = FakeHost("cp-a")
    ctx = context(inv, "cp-a", host, dry_run=True, facts_=copy.deepcopy(real))
    binaries.ensure_etcd(ctx)
    assert ctx.changes == ["install etcd 3.5.6 from the pinned release archive"]
    assert host.commands == []  # dry run: described, not done
    ctx = context(inv, "cp-a", host, facts_=copy.deepcopy(real))
    binaries.ensure_etcd(ctx)
    assert len(host.commands) == 1
    assert binaries.ETCD_RELEASE.sha256 in host.commands[0]
    assert host.commands[0].index("sha256sum") < host.commands[0].index("tar -xzf")
    installed = copy.deepcopy(real)
    installed["etcd_version"] = "3.5.6"
    installed["bin"]["etcd"] = "/usr/local/bin/etcd"
    ctx = context(inv, "cp-a", host, facts_=installed)
    binaries.ensure_etcd(ctx)
    assert ctx.changes == []


def test_konnectivity_on_a_real_host_comes_from_its_pinned_image_once():
    inv = inventory()  # Kubernetes 1.36, konnectivity mode
    real = facts.parse(FACTS_OUTPUT.format(now=0).replace("lab 1", "lab 0")
                       .replace("bin.curl -", "bin.curl /usr/bin/curl"))
    digest = konnectivity_release.pinned_digest("proxy-agent", "0.36.0")
    host = FakeHost("node-a1")
    ctx = context(inv, "node-a1", host, facts_=copy.deepcopy(real))
    binaries.ensure_konnectivity(ctx)
    assert ctx.changes == [f"install proxy-agent 0.36.0 from its pinned image ({digest[:19]}...)"]
    assert len(host.commands) == 1 and digest in host.commands[0]
    assert ctx.facts["konnectivity"] == "/usr/local/bin/proxy-agent"
    installed = copy.deepcopy(real)
    installed["konnectivity_release.proxy-agent"] = konnectivity_release.marker_line(
        "proxy-agent", "0.36.0", digest)
    ctx = context(inv, "node-a1", FakeHost("node-a1", strict=True), facts_=installed)
    binaries.ensure_konnectivity(ctx)
    assert ctx.changes == []
    older = dataclasses.replace(inv, cluster=dataclasses.replace(
        inv.cluster, kubernetes_version="1.30.1"))
    with pytest.raises(StepError, match=r"no Konnectivity release is pinned for Kubernetes "
                                        r"1\.30; use one of 1\.34, 1\.35, 1\.36"):
        binaries.ensure_konnectivity(context(older, "node-a1", FakeHost("node-a1"),
                                             facts_=copy.deepcopy(real)))


def test_binaries_real_host_without_curl_is_named_before_anything_runs():
    inv = inventory()
    real = facts.parse(FACTS_OUTPUT.format(now=0).replace("lab 1", "lab 0"))
    assert real["bin"]["curl"] is None or not real["bin"]["curl"]
    host = FakeHost("cp-a", strict=True)
    ctx = context(inv, "cp-a", host, facts_=real)
    with pytest.raises(StepError, match=r"cp-a: curl not found.*apt-get install curl"):
        binaries.ensure_etcd(ctx)
    assert host.commands == []


# --------------------------------------------------------------------------- pki placement


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    inv = inventory()
    return inv, generate(inv, tmp_path_factory.mktemp("pki"))


def test_pki_place_writes_every_file_then_nothing(issued):
    inv, result = issued
    host = FakeHost("cp-a")
    ctx = context(inv, "cp-a", host, shared={"pki": result})
    pki.place(ctx)
    expected = {f.path for f in result.hosts["cp-a"].files}
    assert set(host.files) == expected
    assert len(ctx.changes) == len(expected)
    assert host.files["/etc/kubernetes/pki/ca.key"].mode == 0o600
    again = context(inv, "cp-a", host, shared={"pki": result})
    pki.place(again)
    assert again.changes == []


def test_pki_place_dry_run_writes_nothing(issued):
    inv, result = issued
    host = FakeHost("node-a1")
    ctx = context(inv, "node-a1", host, dry_run=True, shared={"pki": result})
    pki.place(ctx)
    assert host.files == {} and host.writes == []
    assert sorted(c.removeprefix("write ") for c in ctx.changes) == sorted(
        f.path for f in result.hosts["node-a1"].files)


def test_pki_place_removes_ca_keys_when_they_stay_off_hosts(tmp_path):
    inv = inventory(ca_keys_on_hosts=False)
    result = generate(inv, tmp_path)
    host = FakeHost("cp-b")
    host.files["/etc/kubernetes/pki/ca.key"] = FakeFile(b"old key", 0o600)
    host.files["/etc/kubernetes/pki/etcd/ca.key"] = FakeFile(b"old key", 0o600)
    ctx = context(inv, "cp-b", host, shared={"pki": result})
    pki.place(ctx)
    assert "/etc/kubernetes/pki/ca.key" not in host.files
    assert "remove /etc/kubernetes/pki/ca.key (CA keys stay off this host)" in ctx.changes
    assert any("rm -f" in c and "etcd/ca.key" in c for c in host.commands)


# --------------------------------------------------------------------------- etcd definitions


def test_etcd_service_uses_the_document_flags_and_both_cert_auths():
    inv = inventory()
    host = inv.host("cp-b")
    env = etcd.initial_env(etcd.MAIN, inv, list(inv.etcd_members), "new")
    svc = etcd.service(etcd.MAIN, inv, host, "/usr/bin/etcd", env)
    words = set(svc.command_line)
    assert "--cert-file=/etc/kubernetes/pki/etcd/server.crt" in words
    assert "--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt" in words
    assert "--client-cert-auth=true" in words and "--peer-client-cert-auth=true" in words
    assert f"--listen-peer-urls=https://{host.address}:2380" in words
    assert env["ETCD_INITIAL_CLUSTER"] == (
        "cp-a=https://10.0.16.10:2380,cp-b=https://10.0.32.10:2380,cp-c=https://10.0.48.10:2380")
    events = etcd.service(etcd.EVENTS, inv, host, "/usr/bin/etcd", env)
    assert f"--listen-client-urls=https://{host.address}:2382,https://127.0.0.1:2382" in set(
        events.command_line)
    assert "--data-dir=/var/lib/etcd/events" in set(events.command_line)


def test_api_server_values_come_from_the_etcd_clusters():
    inv = inventory()
    assert etcd.etcd_servers(inv) == ("https://10.0.16.10:2379,https://10.0.32.10:2379,"
                                      "https://10.0.48.10:2379")
    assert etcd.etcd_servers_overrides(inv) == (
        "/events#https://10.0.16.10:2382;https://10.0.32.10:2382;https://10.0.48.10:2382")


def test_recorded_initial_env_keeps_a_members_unit_stable():
    inv = inventory()
    host = inv.host("cp-a")
    first = etcd.initial_env(etcd.MAIN, inv, list(inv.etcd_members), "new")
    unit = render_unit(etcd.service(etcd.MAIN, inv, host, "/usr/bin/etcd", first)).encode()
    assert etcd.recorded_env(unit) == first
    later = etcd.initial_env(etcd.MAIN, inv, list(inv.etcd_members)[:2], "existing")
    assert later != first  # membership changed since; the recorded values win for cp-a
    assert etcd.recorded_env(None) == {}


def test_member_list_parser():
    text = ('{"header":{},"members":[{"ID":12345678901234567890,"name":"cp-a",'
            '"peerURLs":["https://10.0.16.10:2380"]},{"ID":17,"peerURLs":["https://x:2380"]}]}')
    members = etcd.parse_members(text)
    assert members[0] == etcd.Member("ab54a98ceb1f0ad2", "cp-a", ("https://10.0.16.10:2380",))
    assert members[1].name == "" and members[1].id_hex == "11"


def test_the_action_order_removes_members_before_retiring_hosts():
    titles = [s.title for s in steps.ACTION]
    assert titles == ["facts", "lock", "trust", "preflight", "ssh-access", "binaries", "pki",
                      "etcd-volume",
                      "etcd", "etcd-retire", "control-plane", "egress-nodes", "egress",
                      "egress-nodes-retire", "egress-retire", "cluster-objects",
                      "join-objects", "csr-approver", "nodes", "pod-network", "nodes-admit",
                      "addons", "control-plane-retire"]


# --------------------------------------------------------------------------- engine


def test_engine_skips_failed_hosts_in_later_steps_and_names_them():
    inv = inventory()
    seen: list[tuple[str, str]] = []

    def first(ctx: HostContext) -> None:
        seen.append(("first", ctx.name))
        if ctx.name == "node-b1":
            raise StepError("node-b1: disk on fire")
        ctx.note("did first")

    def second(ctx: HostContext) -> None:
        seen.append(("second", ctx.name))

    action = [Step("first", all_hosts, run=first), Step("second", all_hosts, run=second)]
    runners = {h.name: FakeHost(h.name) for h in inv.hosts}
    with pytest.raises(ActionFailed) as caught:
        run_steps(inv, action, lambda h: runners[h.name], dry_run=False)
    assert set(caught.value.failures) == {"node-b1"}
    assert "node-b1: first: node-b1: disk on fire" in str(caught.value)
    assert ("second", "node-b1") not in seen
    assert {n for s, n in seen if s == "second"} == {h.name for h in inv.hosts} - {"node-b1"}
    assert len(caught.value.report.lines()) == len(inv.hosts) - 1


def test_whole_action_on_fake_hosts_second_run_is_empty(issued, monkeypatch):
    """facts -> preflight -> binaries -> pki on fake lab hosts; etcd steps are left to the
    lab tests (they need a real etcd)."""
    inv, result = issued
    import time
    now = int(time.time())
    def facts_answer(_command: str, stdin: bytes | None) -> Result:
        assert stdin is not None and b"uname -s" in stdin
        return Result(0, FACTS_OUTPUT.format(now=now), "")

    runners = {h.name: FakeHost(h.name).on("sh -s", handler=facts_answer) for h in inv.hosts}
    action = steps.ACTION[:7]  # facts, lock, trust, preflight, ssh-access, binaries, pki
    names = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
             "kubelet", "proxy-server", "proxy-agent")
    local = LocalBinaries(dir=Path("/k8s"), paths={n: f"/k8s/{n}" for n in names},
                          versions=dict.fromkeys(names, "1.31.2"),
                          digests=dict.fromkeys(names, "0" * 64))
    shared = {"pki": result, "k8s_bin": local}
    first = run_steps(inv, action, lambda h: runners[h.name], dry_run=False, shared=shared)
    assert first.changed
    second = run_steps(inv, action, lambda h: runners[h.name], dry_run=False, shared=shared)
    assert not second.changed, second.lines()
