"""The bootstrap resource in the program (components/cluster_bootstrap.py), under the mocks:
it bootstraps the inventory the program builds, only after the hosts exist, and every value
that holds key material (the PKI, an imported PKI, the admin kubeconfig) is a secret in
state and in the program, while the CA certificate and the endpoints stay plain.

Its provider's check and diff are called as the engine calls them (check gets the old
inputs, diff the old outputs): they open no socket and need no SSH key, a converged stack
shows no change, and a changed inventory or a due certificate shows in `plan`."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
import socket
import stat
import subprocess
import sys
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings

from bootstrap.pki import bundle, generate
from components import cluster_bootstrap as cb
from components.bootstrap_plan import inventory_changes
from components.cluster_bootstrap import (
    SECRET_PROPERTIES,
    TYPE,
    ClusterBootstrap,
    ClusterBootstrapProvider,
    bundle_from_state,
)
from components.review import evaluation as review_evaluation
from components.review import secret_inputs
from tests.program.mocks import AwsMocks, Evaluation, RecordingMonitor, evaluate
from tests.program.stackconfig import stack_config
from tests.unit.pki_support import ROOT, example_data, load

KEY_MATERIAL = ("PRIVATE KEY", "client-key-data")


def holds_key_material(value: Any) -> bool:
    """Whether a value holds a private key: in plain text, or inside a PKI bundle."""
    text = json.dumps(value)
    if any(word in text for word in KEY_MATERIAL):
        return True
    try:
        files = json.loads(value)["files"] if isinstance(value, str) else {}
    except (ValueError, KeyError, TypeError):
        return False
    return any(b"PRIVATE KEY" in base64.b64decode(f["content"]) for f in files.values())


@pytest.fixture(scope="module")
def pki_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A real PKI: what the provider's create would put in state."""
    where = tmp_path_factory.mktemp("pki") / "pki"
    generate(load(example_data("ecdsa")), where, workers=1)
    return {"pki": json.dumps(bundle.export_dir(where)),
            "admin_kubeconfig": (where / "local" / "admin.conf").read_text(),
            "ca_certificate": (where / "local" / "pki" / "ca.crt").read_text()}


class CreatingMocks(AwsMocks):
    """AWS as before; the bootstrap resource answers as its provider's create does."""

    def __init__(self, created: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.created = created

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        rid, outputs = super().new_resource(args)
        if args.typ == TYPE:
            outputs = {**outputs, **self.created, "plan": [], "applied": []}
            self.resources[-1].outputs = outputs
        return rid, outputs


class DependencyMonitor(RecordingMonitor):
    """Keeps each resource's dependencies (URNs) as well."""

    def __init__(self, mocks: AwsMocks) -> None:
        super().__init__(mocks)
        self.dependencies: dict[str, set[str]] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC name)
        self.dependencies[request.name] = set(request.dependencies)
        return super().RegisterResource(request)


@pytest.fixture(scope="module")
def imported(pki_files: dict[str, str]) -> Evaluation:
    """prod, with a hand-run PKI handed over in `multizone:pkiBundle`."""
    saved = review_evaluation.RecordingMonitor
    review_evaluation.RecordingMonitor = DependencyMonitor  # type: ignore[misc]
    try:
        config = {**stack_config("prod"), "multizone:pkiBundle": pki_files["pki"]}
        return evaluate("prod", config, CreatingMocks(pki_files))
    finally:
        review_evaluation.RecordingMonitor = saved  # type: ignore[misc]


def the_resource(ev: Evaluation) -> Any:
    (reg,) = ev.of_type(TYPE)
    return reg


def test_it_bootstraps_the_inventory_the_program_exports(prod: Evaluation,
                                                          test_stack: Evaluation) -> None:
    for ev in (prod, test_stack):
        reg = the_resource(ev)
        assert reg.inputs["inventory"] == ev.outputs["inventory"]
        assert reg.protect is (ev.stack == "prod")  # destroyed with the stack only on purpose


def test_it_runs_after_every_host_and_the_bastion_exist(imported: Evaluation) -> None:
    monitor = imported.monitor
    assert isinstance(monitor, DependencyMonitor)
    deps = monitor.dependencies["bootstrap"]
    instances = imported.of_type("aws:ec2/instance:Instance")
    assert len(instances) == 4  # three control-plane hosts and the bastion
    for inst in instances:
        assert monitor.urns[(inst.typ, inst.name)] in deps, inst.name
    # The etcd volumes are attached before the bootstrap looks for them.
    for att in imported.of_type("aws:ec2/volumeAttachment:VolumeAttachment"):
        assert monitor.urns[(att.typ, att.name)] in deps, att.name


def test_every_value_holding_key_material_is_secret_in_state(imported: Evaluation) -> None:
    reg = the_resource(imported)
    holding = {k for k, v in reg.outputs.items() if holds_key_material(v)}
    assert holding >= {"pki", "pki_import", "admin_kubeconfig"}  # the mocks answer for real
    secret_in_state = imported.monitor.additional_secret_outputs[(TYPE, "bootstrap")]
    assert holding <= secret_in_state, holding - secret_in_state
    assert secret_in_state >= set(SECRET_PROPERTIES)
    # Sent as secrets too: the engine re-marks what the provider's check returns under a
    # name whose input was secret (dynamic providers are handed secrets unwrapped).
    assert reg.secret_inputs >= {"pki", "pki_import"}
    assert "inventory" not in reg.secret_inputs and "plan" not in reg.secret_inputs


def test_the_kubeconfig_is_a_secret_output_the_ca_and_endpoints_plain(
        imported: Evaluation, pki_files: dict[str, str]) -> None:
    assert imported.outputs["adminKubeconfig"] == pki_files["admin_kubeconfig"]
    assert imported.secret_outputs["adminKubeconfig"] is True
    assert imported.outputs["caCertificate"] == pki_files["ca_certificate"]
    for plain in ("caCertificate", "regionalEndpoint", "zoneEndpoints", "inventory"):
        assert imported.secret_outputs[plain] is False, plain
    for key, value in imported.outputs.items():
        if holds_key_material(value):
            assert imported.secret_outputs[key], key


def test_the_pki_bundle_setting_is_not_a_stack_setting(prod: Evaluation,
                                                      imported: Evaluation) -> None:
    """`multizone:pkiBundle` passes the settings check and reaches only the resource."""
    assert the_resource(prod).inputs["pki_import"] == ""
    assert holds_key_material(the_resource(imported).inputs["pki_import"])
    shown = the_resource(imported).shown_inputs["pki_import"]
    assert isinstance(shown, secret_inputs.Secret)  # a review shows a digest, never the PKI


@pytest.fixture
def fresh_mocks(pki_files: dict[str, str]) -> None:
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(CreatingMocks(pki_files), preview=False)


@pulumi.runtime.test
def test_in_the_program_the_pki_and_kubeconfig_are_secret(fresh_mocks: None) -> pulumi.Output:
    """A decorated test: the checks run inside `apply` and the Output is returned."""
    resource = ClusterBootstrap("probe", {"cluster": {"name": "probe"}})
    secrecy = asyncio.ensure_future(asyncio.gather(*(
        getattr(resource, name).is_secret()
        for name in ("pki", "admin_kubeconfig", "ca_certificate", "plan", "inventory"))))

    def check(values: list[Any]) -> None:
        pki, kubeconfig, ca, flags = values
        assert holds_key_material(pki) and "client-key-data" in kubeconfig
        assert ca.startswith("-----BEGIN CERTIFICATE-----")
        assert flags == [True, True, False, False, False], flags

    return pulumi.Output.all(resource.pki, resource.admin_kubeconfig, resource.ca_certificate,
                             pulumi.Output.from_input(secrecy)).apply(check)


def test_the_pki_is_read_back_from_a_stack_export(pki_files: dict[str, str],
                                                  tmp_path: Any) -> None:
    """`bin/mzk pki export STACK FILE`: the resource's `pki` output, as
    `pulumi stack export --show-secrets` writes a secret (its JSON text under `plaintext`)."""
    secret = {secret_inputs.SIG_KEY: secret_inputs.SECRET_SIG,
              "plaintext": json.dumps(pki_files["pki"])}
    export = {"version": 3, "deployment": {"resources": [
        {"type": "pulumi:pulumi:Stack", "outputs": {}},
        {"type": TYPE, "outputs": {"pki": secret, "ca_certificate": "..."}}]}}
    found = bundle_from_state(export)
    assert found == json.loads(pki_files["pki"])
    out = tmp_path / "pki.json"
    proc = subprocess.run([sys.executable, "-m", "components.cluster_bootstrap", str(out)],
                          input=json.dumps(export), capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert bundle.read_file(out) == found
    encrypted = {"ciphertext": "v1:abc"}
    export["deployment"]["resources"][1]["outputs"]["pki"] = encrypted  # type: ignore[index]
    proc = subprocess.run([sys.executable, "-m", "components.cluster_bootstrap", str(out)],
                          input=json.dumps(export), capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--show-secrets" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


# ------------------------------------------------------------------ check and diff

NO_KEY = "/nonexistent/mzk-test/id_ed25519"  # CI has no operator key: nothing may need one


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every way out to the network fails the test; the attempts are kept."""
    attempts: list[Any] = []

    def refuse(*args: Any, **_kwargs: Any) -> None:
        attempts.append(args)
        raise AssertionError(f"network call during check/diff: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def keyless(raw: dict[str, Any]) -> dict[str, Any]:
    found = copy.deepcopy(raw)
    found["ssh"]["private_key"] = NO_KEY
    return found


def program_inputs(inventory: dict[str, Any], pki_import: str = "") -> dict[str, Any]:
    """What `ClusterBootstrap` registers (the engine hands a dynamic provider secrets
    unwrapped)."""
    return {"inventory": inventory, "pki": "", "pki_import": pki_import, "plan": None,
            "applied": None, "admin_kubeconfig": None, "ca_certificate": None}


class _Report:
    def lines(self) -> list[str]:
        return ["cp-a: etcd: start etcd"]


def apply_offline(monkeypatch: pytest.MonkeyPatch, inputs: dict[str, Any]) -> dict[str, Any]:
    """The provider's create with the hosts stood in for: what the last `up` left."""
    monkeypatch.setattr(cb, "wait_for_ssh", lambda _inventory: None)
    monkeypatch.setattr(cb, "execute", lambda *_a, **_k: _Report())
    outs = ClusterBootstrapProvider().create(inputs).outs
    assert outs is not None
    return dict(outs)


@pytest.fixture(scope="module")
def first_check(pki_files: dict[str, str]) -> dict[str, Any]:
    """The first `up`'s check: the hand-run PKI imported (the stored inputs after it)."""
    raw = keyless(example_data("ecdsa"))
    result = ClusterBootstrapProvider().check({}, program_inputs(raw, pki_files["pki"]))
    assert result.failures == []
    return dict(result.inputs)


def test_a_first_check_imports_the_bundle_and_plans_every_host(
        first_check: dict[str, Any], pki_files: dict[str, str]) -> None:
    offered = json.loads(pki_files["pki"])
    plan = first_check["plan"]
    assert plan[0] == f"local: pki: import multizone:pkiBundle (kubernetes-ca " \
                      f"{bundle.ca_fingerprint(offered)})"
    assert plan[1:] == [f"{h['name']}: bootstrap: every step (new resource)"
                        for h in example_data("ecdsa")["hosts"]]
    assert bundle.same_cluster(json.loads(first_check["pki"]), offered)
    assert first_check["pki_import"] == ""  # consumed: never kept in state twice


def test_a_converged_stack_checks_clean_without_network_or_key(
        first_check: dict[str, Any], no_network: list[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = apply_offline(monkeypatch, first_check)
    assert "join_tokens" not in outputs and outputs["plan"] == []
    assert outputs["pki"] == first_check["pki"]  # apply adds nothing check did not make
    provider = ClusterBootstrapProvider()
    again = provider.check(first_check, program_inputs(first_check["inventory"]))
    assert again.failures == []
    assert again.inputs["plan"] == []
    assert again.inputs["pki"] == first_check["pki"]  # nothing due: the very same bundle
    assert provider.diff("id", outputs, again.inputs).changes is False
    # Deterministic: the same inputs, the same answer.
    twice = provider.check(first_check, program_inputs(first_check["inventory"]))
    assert twice.inputs["plan"] == again.inputs["plan"] and \
        twice.inputs["pki"] == again.inputs["pki"]
    assert no_network == []


def test_the_network_guard_would_catch_a_connection(no_network: list[Any]) -> None:
    """The guard above is real: a connection attempt fails the test."""
    with pytest.raises(AssertionError, match="network call"):
        socket.create_connection(("192.0.2.1", 22), timeout=1)
    with pytest.raises(AssertionError, match="network call"):
        socket.socket().connect(("192.0.2.1", 22))
    assert len(no_network) == 2


def test_an_added_host_shows_in_the_plan_and_as_a_change(
        first_check: dict[str, Any], no_network: list[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = apply_offline(monkeypatch, first_check)
    raw = copy.deepcopy(first_check["inventory"])
    raw["hosts"].append({"name": "cp-d", "zone": "eu-west-1a", "roles": ["control-plane", "etcd"],
                         "address": "10.0.16.11", "host_key": raw["hosts"][0]["host_key"]})
    raw["cluster"]["kubernetes_version"] = "1.35.4"
    provider = ClusterBootstrapProvider()
    checked = provider.check(first_check, program_inputs(raw))
    assert checked.failures == []
    plan = checked.inputs["plan"]
    assert "inventory: cluster.kubernetes_version: 1.36.0 -> 1.35.4" in plan
    assert "inventory: hosts[cp-d]: added (eu-west-1a, 10.0.16.11, control-plane, etcd)" in plan
    issued = [line for line in plan if line.startswith("pki: cp-d: ")]
    assert len(issued) == 1 and " issued" in issued[0], plan
    assert not any(line.startswith("pki: cp-a:") for line in plan)  # cp-a's files kept
    assert all(line.startswith("inventory: ") for line in plan[:2])  # inventory first
    result = provider.diff("id", outputs, checked.inputs)
    assert result.changes is True and result.replaces == []
    assert no_network == []


def test_a_changed_and_a_removed_host_show_in_the_plan(
        first_check: dict[str, Any], no_network: list[Any]) -> None:
    raw = copy.deepcopy(first_check["inventory"])
    raw["hosts"][0]["address"] = "10.0.16.12"  # cp-a replaced: a new address
    removed = raw["hosts"].pop()["name"]
    plan = ClusterBootstrapProvider().check(first_check, program_inputs(raw)).inputs["plan"]
    assert "inventory: hosts[cp-a].address: 10.0.16.10 -> 10.0.16.12" in plan
    assert f"inventory: hosts[{removed}]: removed" in plan
    assert any(line.startswith("pki: cp-a: ") and "renewed" in line for line in plan), plan
    assert any(line.startswith(f"pki: {removed}: ") and "removed" in line for line in plan)
    assert no_network == []


def test_a_certificate_due_for_renewal_shows_and_then_converges(
        tmp_path: Any, no_network: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaf certificates issued 340 days ago (365 days' validity, renewed 30 days before
    they end) are due today: check renews them, the plan says so, and the next check from
    the renewed inputs is clean again."""
    raw = keyless(example_data("ecdsa"))
    old = tmp_path / "pki"
    generate(load(raw), old, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=340), workers=1)
    provider = ClusterBootstrapProvider()
    start = provider.check({}, program_inputs(raw, json.dumps(bundle.export_dir(old)))).inputs
    stale = dict(start, pki=json.dumps(bundle.export_dir(old)))  # the state before renewal
    outputs = apply_offline(monkeypatch, stale)
    renewed = provider.check(stale, program_inputs(raw)).inputs
    renewals = [line for line in renewed["plan"] if " renewed" in line]
    assert {line.split(":")[1].strip() for line in renewals} >= \
        {h["name"] for h in raw["hosts"]}, renewed["plan"]
    assert all(line.startswith("pki: ") for line in renewed["plan"])  # the inventory is equal
    assert provider.diff("id", outputs, renewed).changes is True
    after = provider.check(renewed, program_inputs(raw)).inputs
    assert after["plan"] == [] and after["pki"] == renewed["pki"]
    assert no_network == []


def test_an_import_of_another_clusters_pki_is_refused(
        first_check: dict[str, Any], tmp_path: Any, no_network: list[Any]) -> None:
    other = tmp_path / "other"
    generate(load(example_data("ecdsa")), other, workers=1)
    offered = json.dumps(bundle.export_dir(other))
    result = ClusterBootstrapProvider().check(
        first_check, program_inputs(first_check["inventory"], offered))
    (failure,) = result.failures
    assert failure.property == "pki" and "pulumi config rm multizone:pkiBundle" in failure.reason
    same = ClusterBootstrapProvider().check(
        first_check, program_inputs(first_check["inventory"], first_check["pki"]))
    assert same.failures == [] and same.inputs["plan"] == []  # the same CAs: ignored
    assert no_network == []


def test_a_preview_before_the_hosts_exist_leaves_the_plan_unknown(
        first_check: dict[str, Any]) -> None:
    raw = copy.deepcopy(first_check["inventory"])
    raw["hosts"][0]["address"] = rpc.UNKNOWN
    checked = ClusterBootstrapProvider().check(first_check, program_inputs(raw)).inputs
    assert checked["plan"] == rpc.UNKNOWN and checked["pki"] == first_check["pki"]
    assert ClusterBootstrapProvider().diff("id", first_check, checked).changes is True


def test_no_join_tokens_are_kept_or_output() -> None:
    assert "join_tokens" not in SECRET_PROPERTIES
    assert not hasattr(ClusterBootstrap, "join_tokens")
    assert "join_tokens" not in ClusterBootstrap.__annotations__


def test_the_plan_names_changes_not_order_and_hides_long_values() -> None:
    raw = example_data("ecdsa")
    reordered = copy.deepcopy(raw)
    reordered["hosts"].reverse()
    assert inventory_changes(raw, reordered) == []  # the same hosts: nothing to do
    rekeyed = copy.deepcopy(raw)
    rekeyed["hosts"][1]["host_key"] = raw["hosts"][2]["host_key"]
    rekeyed["ssh"]["user"] = "ops"
    assert inventory_changes(raw, rekeyed) == [
        "inventory: hosts[cp-b].host_key: changed", "inventory: ssh.user: admin -> ops"]
