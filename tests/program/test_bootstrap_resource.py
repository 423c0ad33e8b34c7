"""The bootstrap resource in the program (components/cluster_bootstrap.py), under the mocks:
it bootstraps the inventory the program builds, only after the hosts exist, and every value
that holds key material (the PKI, an imported PKI, the admin kubeconfig) is a secret in
state and in the program, while the CA certificate and the endpoints stay plain."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import subprocess
import sys
from typing import Any

import pulumi
import pytest
from pulumi.runtime import settings as runtime_settings

from bootstrap.pki import bundle, generate
from components.cluster_bootstrap import (
    SECRET_PROPERTIES,
    TYPE,
    ClusterBootstrap,
    bundle_from_state,
)
from components.review import mocks as review_mocks
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
    saved = review_mocks.RecordingMonitor
    review_mocks.RecordingMonitor = DependencyMonitor  # type: ignore[misc]
    try:
        config = {**stack_config("prod"), "multizone:pkiBundle": pki_files["pki"]}
        return evaluate("prod", config, CreatingMocks(pki_files))
    finally:
        review_mocks.RecordingMonitor = saved  # type: ignore[misc]


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
    assert isinstance(shown, review_mocks.Secret)  # a review shows a digest, never the PKI


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
    secret = {review_mocks.SIG_KEY: review_mocks.SECRET_SIG,
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
