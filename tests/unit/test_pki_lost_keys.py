"""A missing key is never silently replaced: new CAs, `sa.key`, the Secrets encryption key
and the egress tunnel keys are made for a new PKI (or a new host, or on purpose); a key that
was there and is gone stops the run with one line saying how to proceed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.control_plane import encryption
from bootstrap.egress import tunnel_keys
from bootstrap.errors import ConfigError, PKIError
from bootstrap.inventory import Inventory
from bootstrap.pki import bundle, generate, key_ledger
from tests.unit.pki_support import ROOT, example_data, load, snapshot

SA_KEY, SA_PUB = "local/pki/sa.key", "local/pki/sa.pub"
ENC = "local/encryption-keys.yaml"


def tunnel_data() -> dict:
    data = example_data("ecdsa")
    data["cluster"]["egress"] = "ssh-tunnel"
    data["ssh"]["authorized_keys"] = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ3aDIzNUlrOXBGVE1SekR2cDJ6SnFaRkhtc1lpZTNz ops"]
    return data


def tunnel_inventory() -> Inventory:
    return load(tunnel_data())


def apply_local(inventory: Inventory, where: Path) -> None:
    """What apply does locally first: PKI, encryption key, tunnel keys."""
    generate(inventory, where, workers=1)
    encryption.ensure(where)
    tunnel_keys.ensure(where, inventory)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("made") / "pki"
    apply_local(tunnel_inventory(), where)
    return where


@pytest.fixture
def pki(made: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pki"
    shutil.copytree(made, copy, symlinks=True)
    return copy


def test_a_new_directory_gets_every_key_and_lists_those_without_a_public_half(
        made: Path) -> None:
    for rel in ("local/pki/ca.key", "local/pki/etcd/ca.key", SA_KEY, SA_PUB, ENC,
                "local/egress-tunnel/cp-a.key"):
        assert (made / rel).is_file(), rel
    listed = json.loads((made / key_ledger.LEDGER).read_text())["keys"]
    assert listed == sorted([ENC, *(f"local/egress-tunnel/{h}.key"
                                    for h in ("cp-a", "cp-b", "cp-c"))])


def test_a_complete_pki_is_kept_byte_for_byte(pki: Path) -> None:
    before = snapshot(pki)
    apply_local(tunnel_inventory(), pki)
    assert snapshot(pki) == before


def test_a_first_run_cut_short_is_still_new_and_completes(tmp_path: Path) -> None:
    where = tmp_path / "pki"
    apply_local(tunnel_inventory(), where)
    # As a first run stopped before kubernetes-ca's certificate: the manifest, the SA pair,
    # some CAs, a key without its certificate; no host directory, nothing else.
    for name in list(where.iterdir()) + list((where / "local").iterdir()):
        if name.name not in ("local", "pki", "manifest.json"):
            shutil.rmtree(name) if name.is_dir() else name.unlink()
    for rel in ("local/pki/ca.crt", "local/pki/front-proxy-ca.crt"):  # keys left alone
        (where / rel).unlink()
    sa_key = (where / SA_KEY).read_bytes()
    apply_local(tunnel_inventory(), where)
    assert (where / "local/pki/ca.crt").is_file()
    assert (where / "cp-a").is_dir()
    assert (where / SA_KEY).read_bytes() == sa_key  # what was made is kept


def test_a_missing_sa_key_is_refused_and_nothing_changes(pki: Path) -> None:
    (pki / SA_KEY).unlink()
    before = snapshot(pki)
    with pytest.raises(PKIError) as err:
        generate(tunnel_inventory(), pki, workers=1)
    message = str(err.value)
    assert message.startswith(f"{pki}/{SA_KEY}: missing, but sa.pub is here")
    assert "--rotate-sa-key" in message and "\n" not in message
    assert snapshot(pki) == before


def test_a_missing_sa_pair_of_an_established_pki_is_refused(pki: Path) -> None:
    (pki / SA_KEY).unlink()
    (pki / SA_PUB).unlink()
    with pytest.raises(PKIError, match="sa.key: missing, but this PKI is not new"):
        generate(tunnel_inventory(), pki, workers=1)


def test_rotate_sa_key_replaces_it_on_purpose_and_keeps_the_old_pair(pki: Path) -> None:
    old_key, old_pub = (pki / SA_KEY).read_bytes(), (pki / SA_PUB).read_bytes()
    result = generate(tunnel_inventory(), pki, workers=1, rotate_sa_key=True)
    assert (pki / SA_KEY).read_bytes() != old_key
    assert (pki / "cp-a/etc/kubernetes/pki/sa.pub").read_bytes() == (pki / SA_PUB).read_bytes()
    retired = sorted((pki / "local/pki/retired").iterdir())
    assert [p.read_bytes() for p in retired] == [old_key, old_pub]
    assert str(pki / SA_KEY) in result.local.written
    generate(tunnel_inventory(), pki, workers=1)  # and the next run keeps the new one


def test_the_command_says_how_to_proceed_and_rotates_on_request(pki: Path) -> None:
    (pki / SA_KEY).unlink()
    command = [sys.executable, "-m", "bootstrap", "pki", "examples/inventory.yaml",
               "--out", str(pki), "--workers", "1"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "--rotate-sa-key" in proc.stderr
    proc = subprocess.run([*command, "--rotate-sa-key"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (pki / SA_KEY).is_file()


def test_a_missing_ca_key_is_left_to_the_ca_kept_elsewhere_not_remade(pki: Path) -> None:
    (pki / "local/pki/ca.key").unlink()
    data = tunnel_data()
    data["pki"]["ca_keys_on_hosts"] = False
    generate(load(data), pki, workers=1)  # leaves still valid: only checked
    assert not (pki / "local/pki/ca.key").exists()


def test_a_lost_encryption_key_is_refused_until_forgotten_on_purpose(pki: Path) -> None:
    (pki / ENC).unlink()
    with pytest.raises(PKIError) as err:
        encryption.ensure(pki)
    assert str(err.value).startswith(f"{pki}/{ENC}: the Secrets encryption key is missing, "
                                      "but this PKI made it earlier")
    assert f"--forget-lost-key {ENC}" in str(err.value)
    assert not (pki / ENC).exists()
    assert key_ledger.forget(pki, [ENC]) == [ENC]
    _config, made_now = encryption.ensure(pki)
    assert made_now and (pki / ENC).is_file()
    with pytest.raises(ConfigError, match="the key is present, not lost"):
        key_ledger.forget(pki, [ENC])
    with pytest.raises(ConfigError, match="not a key this PKI made"):
        key_ledger.forget(pki, ["local/pki/ca.key"])


def test_a_lost_tunnel_key_is_refused_but_a_new_host_or_mode_gets_one(pki: Path) -> None:
    (pki / "local/egress-tunnel/cp-b.key").unlink()
    with pytest.raises(PKIError, match=r"cp-b\.key: the egress tunnel key of cp-b is missing"):
        tunnel_keys.ensure(pki, tunnel_inventory())
    plain = load(example_data("ecdsa"))  # leaving ssh-tunnel mode removes them on purpose
    tunnel_keys.ensure(pki, plain)
    assert not (pki / "local/egress-tunnel").exists()
    assert key_ledger.LEDGER and all(not k.startswith("local/egress-tunnel/") for k in
                                     json.loads((pki / key_ledger.LEDGER).read_text())["keys"])
    made_again = tunnel_keys.ensure(pki, tunnel_inventory())  # back in the mode: new keys
    assert len(made_again.written) == 3


def test_a_bundle_missing_a_key_the_pki_had_is_refused(pki: Path, tmp_path: Path) -> None:
    for rel in (SA_KEY, ENC, "local/egress-tunnel/cp-a.key"):
        exported = bundle.export_dir(pki)
        del exported["files"][rel]
        with pytest.raises(ConfigError, match=rf"{rel}: missing, but"):
            bundle.import_dir(exported, tmp_path / "new")
        assert not (tmp_path / "new").exists()
