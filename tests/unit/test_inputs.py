"""Hostile input: every bad inventory, key file or YAML document is one `ConfigError` line
naming the file or the field (exit code 2), never a traceback, a hang, a silent default or
anything written.

The YAML reader (bootstrap/safe_yaml.py) is tested through `inventory.load`, the way a user
meets it; the value rules (bootstrap/rules.py) through `inventory.parse`. The stack side of
the same rules is tests/program/test_settings.py and test_stackfile.py.
"""

from __future__ import annotations

import base64
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bootstrap import cli, inventory, safe_yaml
from bootstrap.control_plane import encryption
from bootstrap.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "inventory.yaml"
EXAMPLE_TEXT = EXAMPLE.read_text()
ED25519 = EXAMPLE_TEXT.split("host_key: ")[2].split("\n")[0]  # cp-b's key line


def _load_error(tmp_path: Path, content: str | bytes) -> str:
    """The one line `inventory.load` refuses `content` with."""
    path = tmp_path / "inv.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        inventory.load(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


def _parse_error(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        inventory.parse(data, source="inv.yaml")
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith("inv.yaml: "), message
    return message.removeprefix("inv.yaml: ")


def _replace(old: str, new: str) -> str:
    assert EXAMPLE_TEXT.count(old) == 1, old
    return EXAMPLE_TEXT.replace(old, new)


@pytest.fixture
def data() -> dict:
    return yaml.safe_load(EXAMPLE_TEXT)


# --------------------------------------------------------------------------- the file


def test_the_example_still_loads_through_the_safe_reader() -> None:
    assert inventory.load(EXAMPLE).cluster.name == "mz-example"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_utf16_file_is_not_utf8_text(tmp_path: Path, encoding: str) -> None:
    error = _load_error(tmp_path, EXAMPLE_TEXT.encode(encoding))
    assert "not UTF-8 text" in error and "save it as UTF-8" in error


def test_binary_bytes_are_not_utf8_text(tmp_path: Path) -> None:
    error = _load_error(tmp_path, b"cluster:\n  name: \xff\xfe\xc3(\x80\x81 binary\n")
    assert error.startswith("line 2: not UTF-8 text (byte 0xff at offset 17)"), error
    assert "not UTF-8 text" in _load_error(tmp_path, bytes(range(256)) * 16)


def test_a_control_character_is_one_line(tmp_path: Path) -> None:
    error = _load_error(tmp_path, "cluster:\n  name: a\x07b\n")
    assert error == "line 2: not valid YAML (the character U+0007 is not allowed); remove it"


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    error = _load_error(tmp_path, b"# " + b"x" * safe_yaml.MAX_BYTES + b"\n")
    assert "more than the 4 MiB" in error


@pytest.mark.parametrize("document", [
    "[" * 10_000 + "]" * 10_000,  # flow sequences
    "{a: " * 10_000 + "1" + "}" * 10_000,  # flow mappings
    "- " * 10_000 + "x\n",  # block sequences, one line
    "".join(" " * i + "k:\n" for i in range(1_000)),  # block mappings
], ids=["flow-list", "flow-map", "block-list", "block-map"])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path: Path, document: str) -> None:
    error = _load_error(tmp_path, document)
    assert f"nested more than {safe_yaml.MAX_DEPTH} levels deep; flatten it" in error, error


def _laughs(levels: int, width: int = 10) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_at_once_without_expanding(tmp_path: Path) -> None:
    document = _laughs(10)  # 10**10 values written out
    assert len(document) < 4096
    started = time.monotonic()
    error = _load_error(tmp_path, document)
    elapsed = time.monotonic() - started
    assert "aliases expand to more than" in error and "use fewer aliases" in error, error
    assert elapsed < 1.0, f"{elapsed:.2f}s: the aliases were expanded"


def test_aliases_nested_through_each_other_count_as_nesting(tmp_path: Path) -> None:
    chain = "".join(f"a{i}: &a{i} [{f'*a{i - 1}' if i else '1'}]\n" for i in range(100))
    assert "levels deep once its aliases are written out" in _load_error(tmp_path, chain)


def test_an_alias_inside_its_own_node_is_refused(tmp_path: Path) -> None:
    assert "remove the loop" in _load_error(tmp_path, "a: &a [1, *a]\n")


def test_modest_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text(_laughs(3) + "base: &base {x: 1, y: 2}\nover:\n  <<: *base\n  y: 3\n")
    data = safe_yaml.load(path)
    assert len(data["l2"]) == 10 and data["l2"][9][9] == ["lol"] * 10
    assert data["over"] == {"x": 1, "y": 3}  # an explicit key overrides a merged one


def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    text = _replace("  key_type: rsa\n", "  key_type: rsa\n  key_type: ecdsa\n")
    first = text.splitlines().index("  key_type: rsa") + 1
    error = _load_error(tmp_path, text)
    assert error == (f"line {first + 1}: key 'key_type' is given twice (lines {first} and "
                     f"{first + 1}); keep one")


@pytest.mark.parametrize(("text", "expected"), [
    ("1: x\n", "line 1: key 1 is not text; quote it"),
    ("on: x\n", "line 1: key true (YAML reads on/off/yes/no as true/false) is not text"),
    ("? [a, b]\n: x\n", "line 1: a key is a list or a mapping; keys are text"),
    ("base: &b {1: x}\nm:\n  <<: *b\n", "line 1: key 1 is not text"),
])
def test_a_key_that_is_not_text_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    assert _load_error(tmp_path, text).startswith(expected)


@pytest.mark.parametrize("text", ["a: !!binary aGVsbG8=\n", "a: !!set {x, y}\n",
                                  "a: " + "9" * 5000 + "\n"])
def test_values_no_consumer_can_hold_are_refused(tmp_path: Path, text: str) -> None:
    assert _load_error(tmp_path, text).startswith("line 1: ")


def test_a_date_stays_text() -> None:
    assert safe_yaml.parse(b"d: 2026-01-31\n", "x") == {"d": "2026-01-31"}


def test_two_documents_are_refused(tmp_path: Path) -> None:
    error = _load_error(tmp_path, EXAMPLE_TEXT + "---\n" + EXAMPLE_TEXT)
    assert "not valid YAML (expected a single document" in error


# --------------------------------------------------------------------------- the values


@pytest.mark.parametrize(("old", "new", "field"), [
    ("  - name: cp-a\n", "  - name: |\n      cp-a\n", "hosts[0].name"),
    ('  kubernetes_version: "1.36.0"\n', "  kubernetes_version: |\n    1.36.0\n",
     "cluster.kubernetes_version"),
    ("  name: mz-example\n", "  name: |\n    mz-example\n", "cluster.name"),
    ("    name: api.mz-example.internal\n", "    name: |\n      api.mz-example.internal\n",
     "endpoints.regional.name"),
    ("  - name: eu-west-1a\n", "  - name: |\n      eu-west-1a\n", "zones[0].name"),
    ("    name: bastion\n", "    name: |\n      bastion\n", "ssh.bastion.name"),
    ("  user: admin\n", "  user: |\n    admin\n", "ssh.user"),
    ("  service_cidr: 10.96.0.0/12\n", "  service_cidr: |\n    10.96.0.0/12\n",
     "cluster.service_cidr"),
    ("  private_key: ~/.ssh/id_ed25519\n", "  private_key: |\n    ~/.ssh/id_ed25519\n",
     "ssh.private_key"),
    (f"    host_key: {ED25519}\n", f"    host_key: |\n      {ED25519}\n", "hosts[1].host_key"),
])
def test_a_trailing_newline_is_refused_naming_the_field(tmp_path: Path, old: str, new: str,
                                                       field: str) -> None:
    error = _load_error(tmp_path, _replace(old, new))
    assert error.startswith(f"{field}: "), error
    assert "\\n' holds a line break" in error and "'|-' drops it" in error, error


@pytest.mark.parametrize(("version", "expected"), [
    ("1.\uff13\uff16.0", "'1.\uff13\uff16.0' is not valid"),  # fullwidth digits
    ("1.\u0663\u0666.0", "'1.\u0663\u0666.0' is not valid"),  # Arabic-Indic digits
    ("1.036.0", "'1.036.0' is not valid"),
    ("v1.36.0", "'v1.36.0' is not valid"),
    ("1.27.0", "1.27.0 is too old; use 1.28.0 or newer"),
])
def test_a_version_is_ascii_digits_only(data: dict, version: str, expected: str) -> None:
    data["cluster"]["kubernetes_version"] = version
    error = _parse_error(data)
    assert error.startswith(f"cluster.kubernetes_version: {expected}"), error


@pytest.mark.parametrize("name", ["cp\uff41", "cp-\uff11", "Cp-a", "cp-a-", "-cp-a", "cp_a"])
def test_a_host_name_is_an_ascii_dns_label(data: dict, name: str) -> None:
    data["hosts"][0]["name"] = name
    assert _parse_error(data).startswith("hosts[0].name: "), name


@pytest.mark.parametrize("value", [[], 0, "", None, "rsa", False])
def test_a_pki_that_is_not_a_mapping_is_refused_not_defaulted(data: dict, value) -> None:
    data["pki"] = value
    assert _parse_error(data).startswith("pki: expected a mapping, got ")


def test_an_endpoint_address_of_the_wrong_type_is_refused_not_dropped(data: dict) -> None:
    data["endpoints"]["regional"]["address"] = 0
    assert _parse_error(data).startswith("endpoints.regional.address: expected a non-empty "
                                         "string, got 0")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("rsa_bits", 1024, "pki.rsa_bits: 1024 is not one of: 2048, 3072, 4096; use one of them"),
    ("rsa_bits", "2048", "pki.rsa_bits: expected a whole number, got the string '2048'"),
    ("rsa_bits", True, "pki.rsa_bits: expected a whole number, got true"),
    ("key_type", "dsa", "pki.key_type: 'dsa' is not one of: rsa, ecdsa"),
    ("key_type", 1, "pki.key_type: 1 is not one of: rsa, ecdsa"),
    ("validity_days", -1, "pki.validity_days: -1 is out of range; use 1..3650"),
    ("ca_validity_days", 100, "pki.validity_days: 365 days: certificates would outlive "
                              "their CA (pki.ca_validity_days is 100)"),
    ("renew_before_days", 365, "pki.renew_before_days: 365 days is not less than "
                               "pki.validity_days (365)"),
    ("ca_keys_on_hosts", "yes please", "pki.ca_keys_on_hosts: expected true or false"),
])
def test_pki_settings_follow_the_shared_rules(data: dict, key: str, value,
                                              expected: str) -> None:
    data["pki"][key] = value
    error = _parse_error(data)
    assert error.startswith(expected), error


def _truncated(line: str, drop: int) -> str:
    kind, body = line.split()[:2]
    blob = base64.b64decode(body)
    return f"{kind} {base64.b64encode(blob[:-drop]).decode()}"


@pytest.mark.parametrize(("key", "expected"), [
    ("ssh-ed25519 AAAA", "host key is truncated"),
    (_truncated(ED25519, 1), "host key is truncated or corrupt"),
    (_truncated(ED25519, 20), "host key is truncated or corrupt"),
    (ED25519[:-6], "host key is not valid base64"),
    ("ecdsa-sha2-nistp256 " + base64.b64encode(
        b"\0\0\0\x13ecdsa-sha2-nistp256\0\0\0\x08nistp256\0\0\0\x41\x04" + b"\x01" * 64
    ).decode(), "host key is truncated or corrupt"),  # a point not on the curve
    (f"{ED25519}\nssh-ed25519 AAAA", f"'{ED25519}\\nssh-ed25519 AAAA' holds a line break"),
    ("ssh-ed25519\u3000" + ED25519.split()[1], "malformed host key"),  # ideographic space
])
def test_a_host_key_is_parsed_in_full(data: dict, key: str, expected: str) -> None:
    data["hosts"][1]["host_key"] = key
    error = _parse_error(data)
    assert error.startswith(f"hosts[1].host_key: {expected}"), error


def test_a_weak_rsa_host_key_is_refused(data: dict) -> None:
    key = paramiko.RSAKey.generate(1024)
    data["ssh"]["bastion"]["host_key"] = f"ssh-rsa {key.get_base64()}"
    assert _parse_error(data).startswith("ssh.bastion.host_key: host key is a 1024-bit RSA key")


def test_a_host_key_comment_is_dropped_and_the_key_kept(data: dict) -> None:
    data["hosts"][1]["host_key"] = f"  {ED25519}  root@cp-b  "
    assert inventory.parse(data).host("cp-b").host_key == ED25519


def test_an_int_cidr_is_refused_not_read_as_an_address(data: dict) -> None:
    data["cluster"]["service_cidr"] = 167772160  # ipaddress would take it as 10.0.0.0/32
    assert _parse_error(data).startswith("cluster.service_cidr: expected a network in CIDR "
                                         "form, got 167772160; write it as text")


def test_a_cidr_without_a_prefix_is_refused(data: dict) -> None:
    data["zones"][0]["subnets"] = ["10.0.16.0"]
    assert _parse_error(data).startswith("zones[0].subnets[0]: '10.0.16.0' is not a network")


def test_an_unknown_key_with_a_newline_stays_one_line(data: dict) -> None:
    data["cluster"]["colour\nred"] = 1
    assert _parse_error(data).startswith("cluster.colour\\nred: unknown key")


# --------------------------------------------------------------------------- the SSH key


def _private_key(path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _with_key(data: dict, path: str) -> inventory.Inventory:
    data = copy.deepcopy(data)
    data["ssh"]["private_key"] = path
    return inventory.parse(data, source="inv.yaml")


def test_a_readable_private_key_passes_with_tilde_expanded(data: dict, tmp_path: Path,
                                                           monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    _private_key(tmp_path / ".ssh" / "id_ed25519")
    inventory.check_private_key(_with_key(data, "~/.ssh/id_ed25519"))


@pytest.mark.parametrize(("content", "expected"), [
    (None, "No such file or directory"),
    (b"", "not a private key paramiko can load"),
    (ED25519.encode() + b"\n", "not a private key paramiko can load"),  # the public half
])
def test_a_bad_private_key_is_bad_input(data: dict, tmp_path: Path, content: bytes | None,
                                        expected: str) -> None:
    path = tmp_path / "id_ed25519"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        inventory.check_private_key(_with_key(data, str(path)))
    message = str(caught.value)
    assert message.startswith(f"inv.yaml: ssh.private_key: cannot load {path} ({expected}")
    assert "\n" not in message


def test_an_encrypted_private_key_is_bad_input(data: dict, tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="a passphrase protects it"):
        inventory.check_private_key(_with_key(data, str(path)))


def test_apply_with_a_missing_private_key_is_exit_2_before_the_pki(
        data: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("MZK_K8S_BIN_DIR", raising=False)
    data["ssh"]["private_key"] = str(tmp_path / "absent" / "id_ed25519")
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["apply", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ssh.private_key: cannot load" in err, err
    assert not (tmp_path / "pki").exists()  # nothing issued


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("content", [
    _replace("  key_type: rsa\n", "  key_type: rsa\n  key_type: ecdsa\n").encode(),
    EXAMPLE_TEXT.encode("utf-16"),
    _replace("  rsa_bits: 2048\n", "  rsa_bits: 1024\n").encode(),
    _laughs(10).encode(),
], ids=["duplicate-key", "utf-16", "rsa-bits", "billion-laughs"])
def test_cli_plan_bad_input_is_exit_2_one_line_nothing_written(tmp_path: Path,
                                                               content: bytes) -> None:
    path = tmp_path / "inv.yaml"
    path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "bootstrap", "plan", str(path), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MZK_K8S_BIN_DIR": ""})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inv.yaml"]  # no pki/


# --------------------------------------------------------------------------- the key file


@pytest.mark.parametrize(("content", "expected"), [
    (b"keys: [{name: a, secret: x}]\nkeys: []\n", "key 'keys' is given twice"),
    ("keys: []\n".encode("utf-16"), "not UTF-8 text"),
    (_laughs(10).encode(), "aliases expand"),
])
def test_the_encryption_key_file_is_read_the_same_way(tmp_path: Path, content: bytes,
                                                      expected: str) -> None:
    path = encryption.path_in(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        encryption.ensure(tmp_path)
    message = str(caught.value)
    assert expected in message and "\n" not in message and str(path) in message
    assert message.endswith("restore it from your backup")
