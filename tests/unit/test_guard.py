"""The guards before anything changes: a host that trusts another CA stops the whole run,
naming hosts and both fingerprints; the same CA (or a host without one) passes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from bootstrap.engine import HostContext
from bootstrap.errors import ConfigError
from bootstrap.inventory import parse
from bootstrap.pki import generate
from bootstrap.pki.table import CAS
from bootstrap.steps import guard
from tests.unit.fakes import FakeFile, FakeRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inventory.yaml"
CA = "/etc/kubernetes/pki/ca.crt"
OTHER_CAS = tuple(ca.cert_path for ca in CAS if ca.cert_path != CA)


@pytest.fixture(scope="module")
def two_pkis(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data = yaml.safe_load(EXAMPLE.read_text())
    data["pki"]["key_type"] = "ecdsa"
    inv = parse(data)
    return inv, generate(inv, tmp_path_factory.mktemp("a")), \
        generate(inv, tmp_path_factory.mktemp("b"))


def group(inv, pki, host_ca: bytes | None):  # type: ignore[no-untyped-def]
    contexts = []
    for host in inv.hosts:
        runner = FakeRunner(host.name)
        states: dict[str, str | None] = dict.fromkeys(OTHER_CAS)
        states[CA] = None
        if host_ca is not None:
            runner.files[CA] = FakeFile(host_ca)
            states[CA] = f"{hashlib.sha256(host_ca).hexdigest()} 644 root root"
        contexts.append(HostContext(host=host, runner=runner, inventory=inv, dry_run=False,
                                    shared={"pki": pki}, facts={"file_states": states}))
    return contexts


def ca_of(pki) -> bytes:  # type: ignore[no-untyped-def]
    return next(f.content for f in pki.hosts["cp-a"].files if f.path == CA)


def test_a_host_trusting_another_ca_stops_the_run_naming_hosts_and_fingerprints(
        two_pkis) -> None:  # type: ignore[no-untyped-def]
    inv, live, other = two_pkis
    with pytest.raises(ConfigError) as caught:
        guard.check_trust(group(inv, other, ca_of(live)))
    message = str(caught.value)
    assert "\n" not in message
    assert "cp-a, cp-b, cp-c, node-a1, node-b1, node-c1 trust kubernetes-ca" in message
    assert guard.fingerprint(ca_of(live)) in message
    assert guard.fingerprint(ca_of(other)) in message
    assert str(other.out_dir) in message and "--pki-dir" in message


def test_the_same_ca_or_no_ca_passes_without_reading(two_pkis) -> None:  # type: ignore[no-untyped-def]
    inv, live, _ = two_pkis
    same = group(inv, live, ca_of(live))
    guard.check_trust(same)
    assert all(ctx.runner.commands == [] for ctx in same)
    guard.check_trust(group(inv, live, None))  # new hosts: nothing to protect


def test_known_states_from_the_facts_spare_the_round_trip(two_pkis) -> None:  # type: ignore[no-untyped-def]
    inv, live, _ = two_pkis
    contexts = group(inv, live, None)
    digest = hashlib.sha256(ca_of(live)).hexdigest()
    for ctx in contexts:
        ctx.facts["file_states"] = {p: f"{digest} 644 root root" for p in (CA, *OTHER_CAS)}
    guard.check_trust(contexts)
    assert all(ctx.runner.commands == [] for ctx in contexts)


def test_check_warns_with_days_left_when_a_ca_nears_its_end(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from bootstrap.apply_command import warn_expiry

    data = yaml.safe_load(EXAMPLE.read_text())
    data["pki"].update(key_type="ecdsa", ca_validity_days=40, validity_days=30,
                       renew_before_days=10)
    inv = parse(data)
    generate(inv, tmp_path / "pki")
    warn_expiry(inv, tmp_path / "pki")
    err = capsys.readouterr().err
    assert re.search(r"warning: kubernetes-ca \(local/pki/ca\.crt\) expires in (39|40) days",
                     err), err
    data["pki"].update(ca_validity_days=3650, validity_days=365, renew_before_days=30)
    generate(parse(data), tmp_path / "fresh")
    warn_expiry(parse(data), tmp_path / "fresh")
    assert capsys.readouterr().err == ""
