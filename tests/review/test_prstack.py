"""A pull request's stack: the test template, its own name, an expiry, never protected."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from components.review import prstack
from components.review.errors import ReviewError
from components.settings import from_config
from components.stackfile import as_engine_config, config_values

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 6, 10, 23, 30, tzinfo=dt.UTC)


def test_values_come_from_the_template_with_name_expiry_and_no_protection() -> None:
    values = prstack.values(ROOT, 42, NOW)
    template = config_values(ROOT / "stacks" / "Pulumi.test.yaml")
    assert values["multizone:clusterName"] == "mz-pr-42"
    assert values["multizone:expiresAt"] == "2026-06-13"
    assert (values["multizone:protect"], values["multizone:ephemeral"]) == (False, True)
    assert values["multizone:zones"] == template["multizone:zones"]
    settings = from_config(as_engine_config(values), "pr-42")
    assert settings.expires_at == "2026-06-13" and not settings.protect


def test_the_written_file_is_a_valid_stack_file(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.test.yaml").write_bytes(
        (ROOT / "stacks" / "Pulumi.test.yaml").read_bytes())
    path = prstack.write(tmp_path, 7, NOW, ttl_days=1)
    assert path.name == "Pulumi.pr-7.yaml"
    assert config_values(path)["multizone:expiresAt"] == "2026-06-11"


@pytest.mark.parametrize(("number", "ttl", "message"), [
    (0, 3, "0 is not a pull request's test stack"),
    (5, 0, "--ttl-days 0: out of range"),
    (10 ** 14, 3, "100000000000000 is not a pull request's test stack"),
])
def test_bad_input_is_one_line(number: int, ttl: int, message: str) -> None:
    with pytest.raises(ReviewError) as caught:
        prstack.values(ROOT, number, NOW, ttl)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def _key(tmp_path: Path, mode: int = 0o600) -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "operator-key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(mode)
    return path


def test_ci_gets_its_key_and_its_address_alone(tmp_path: Path) -> None:
    path = _key(tmp_path)
    values = prstack.values(ROOT, 42, NOW, key=path, runner_address="8.8.4.4")
    template = config_values(ROOT / "stacks" / "Pulumi.test.yaml")
    assert values["multizone:adminCidrs"] == [*template["multizone:adminCidrs"], "8.8.4.4/32"]
    assert values["multizone:ssh"]["privateKeyPath"] == str(path.resolve())
    assert values["multizone:ssh"]["publicKey"].startswith("ssh-ed25519 AAAA")
    assert values["multizone:ssh"]["user"] == template["multizone:ssh"]["user"]
    settings = from_config(as_engine_config(values), "pr-42")
    assert settings.ssh.public_key.split()[:2] == values["multizone:ssh"]["publicKey"].split()[:2]
    assert "8.8.4.4/32" in settings.admin_cidrs
    assert prstack.values(ROOT, 42, NOW)["multizone:adminCidrs"] == template[
        "multizone:adminCidrs"]  # without the flag: the template's ranges only


@pytest.mark.parametrize(("address", "message"), [
    ("10.1.2.3", "not a public address"), ("198.51.100.0/24", "not an IP address"),
    ("0.0.0.0", "not a public address"), ("me", "not an IP address"),  # noqa: S104
])
def test_a_runner_address_is_one_public_host(address: str, message: str) -> None:
    with pytest.raises(ReviewError, match=message):
        prstack.values(ROOT, 42, NOW, runner_address=address)


def test_a_key_others_can_read_or_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReviewError, match="readable by others; chmod 600"):
        prstack.values(ROOT, 42, NOW, key=_key(tmp_path, 0o644))
    junk = tmp_path / "junk"
    junk.write_text("not a key")
    junk.chmod(0o600)
    with pytest.raises(ReviewError, match="not an OpenSSH private key"):
        prstack.values(ROOT, 42, NOW, key=junk)
    with pytest.raises(ReviewError, match="cannot read it"):
        prstack.values(ROOT, 42, NOW, key=tmp_path / "absent")


def test_the_file_is_written_whole_and_readable(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.test.yaml").write_bytes(
        (ROOT / "stacks" / "Pulumi.test.yaml").read_bytes())
    path = prstack.write(tmp_path, "pr-8", NOW)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in (tmp_path / "stacks").iterdir()) == [
        "Pulumi.pr-8.yaml", "Pulumi.test.yaml"]  # no temporary file left behind
