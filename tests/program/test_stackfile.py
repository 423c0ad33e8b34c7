"""`python -m components.stackfile`: stack files checked without the Pulumi engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bootstrap.errors import ConfigError
from components.stackfile import StackFileError, check, config_values
from tests.program.stackconfig import ROOT, STACKS, stack_values


def run(*paths: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "components.stackfile", *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def write_stack(directory: Path, stack: str, values: dict) -> Path:
    path = directory / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump({"config": values}))
    return path


def test_every_shipped_stack_file_is_valid() -> None:
    proc = run(*(f"stacks/Pulumi.{s}.yaml" for s in STACKS))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"stacks/Pulumi.{s}.yaml: valid" for s in STACKS]
    assert proc.stderr == ""


def test_a_bad_setting_is_one_line_naming_the_key_and_exit_2(tmp_path: Path) -> None:
    values = {**stack_values("prod"), "multizone:controlPlanePerZone": 3}
    path = write_stack(tmp_path, "prod", values)
    proc = run(path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: multizone:controlPlanePerZone: ")
    assert "Traceback" not in proc.stderr


def test_every_mistake_of_every_file_is_listed(tmp_path: Path) -> None:
    bad = write_stack(tmp_path, "prod", {**stack_values("prod"),
                                         "multizone:adminCidrs": ["0.0.0.0/0"],
                                         "multizone:vpcCidr": "10.0.0.1/16"})
    good = ROOT / "stacks" / "Pulumi.dev.yaml"
    proc = run(good, bad)
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [f"{good}: valid"]
    keys = {line.split(": ")[1] for line in proc.stderr.splitlines()}
    assert {"multizone:adminCidrs[0]", "multizone:vpcCidr"} <= keys


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("Pulumi.prod.yaml", None, "cannot read it"),
    ("Pulumi.prod.yaml", "config: [unclosed\n", "line 2: not valid YAML"),
    ("Pulumi.prod.yaml", "encryptionsalt: x\n", "config: missing"),
    ("prod.yaml", "config: {}\n", "name it Pulumi.<stack>.yaml"),
])
def test_an_unreadable_file_is_one_line(tmp_path: Path, name: str, content: str | None,
                                        expected: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    problems = check(path)
    assert len(problems) == 1 and expected in problems[0], problems
    assert problems[0].startswith(str(path))


def test_an_encrypted_setting_is_named_not_misread(tmp_path: Path) -> None:
    values = {**stack_values("test"), "multizone:imageId": {"secure": "v1:abc"}}
    problems = check(write_stack(tmp_path, "test", values))
    assert len(problems) == 1 and "multizone:imageId: stored encrypted" in problems[0]


def test_no_arguments_is_usage_and_exit_2() -> None:
    proc = run()
    assert proc.returncode == 2 and "usage:" in proc.stderr


# --------------------------------------------------------------------------- hostile files


def _prod_text() -> str:
    return (ROOT / "stacks" / "Pulumi.prod.yaml").read_text()


def _laughs(levels: int = 10) -> str:
    lines = ["  lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "config:\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(("content", "expected"), [
    (b"config:\n  aws:region: eu-west-1\n  \xff\xfe\x00\x01binary\n", "line 3: not UTF-8 text"),
    ("config: {}\n".encode("utf-16"), "line 1: not UTF-8 text"),
    (b"config:\n  1: x\n", "line 2: key 1 is not text; quote it"),
    (b"config:\n  multizone:nodePool:\n    2024-01-01: x\n    1.5: y\n",
     "line 4: key 1.5 is not text"),
    (_prod_text().replace("    keyType: rsa\n", "    keyType: rsa\n    keyType: ecdsa\n").encode(),
     "key 'keyType' is given twice"),
    (_prod_text().encode() + b"  multizone:protect: false\n",
     "key 'multizone:protect' is given twice"),
    (_laughs().encode(), "aliases expand to more than"),
    (b"config:\n" + b"  - " * 10_000 + b"x\n", "nested more than 64 levels deep"),
    (b"config:\n  multizone:imageId: !!binary aGVsbG8=\n", "line 2: a !!binary value"),
])
def test_a_hostile_stack_file_is_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_bytes(content)
    problems = check(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: ") and expected in problems[0], problems
    assert "\n" not in problems[0]


def test_a_date_inside_a_structure_is_text_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.prod.yaml"
    text = _prod_text().replace("instanceType: m6i.2xlarge", "instanceType: 2024-01-01")
    assert "2024-01-01" in text
    path.write_text(text)  # yaml.safe_load made it a date, which json.dumps cannot write
    problems = check(path)
    assert len(problems) == 1 and "multizone:nodePool.instanceType: '2024-01-01' is not " \
                                   "valid" in problems[0], problems


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("multizone:pki", {**stack_values("prod")["multizone:pki"], "rsaBits": 1024},
     "multizone:pki.rsaBits: 1024 is not one of"),
    ("multizone:pki", {**stack_values("prod")["multizone:pki"], "validityDays": -1},
     "multizone:pki.validityDays: -1 is out of range"),
    ("multizone:pki", {**stack_values("prod")["multizone:pki"], "renewBeforeDays": 400},
     "multizone:pki.renewBeforeDays: 400 days is not less than multizone:pki.validityDays"),
    ("multizone:serviceCidr", 167772160, "multizone:serviceCidr: expected a network"),
    ("multizone:ssh", {**stack_values("prod")["multizone:ssh"], "publicKey": "ssh-ed25519 AAAA"},
     "multizone:ssh.publicKey: public key is truncated"),
])
def test_check_stack_refuses_what_the_bootstrap_would(tmp_path: Path, key: str, value: object,
                                                      expected: str) -> None:
    path = write_stack(tmp_path, "prod", {**stack_values("prod"), key: value})
    problems = check(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: {expected}"), problems


def test_cli_binary_stack_file_exit_2_one_line(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_bytes(bytes(range(256)) * 8)
    proc = run(path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"{path}: line 1: not UTF-8 text (it holds NUL bytes: "
                                        "UTF-16 or a binary file?); save it as UTF-8"]


# --------------------------------------------------------------------------- key material


_BUNDLE_TEXT = '{"format": "multizone-k8s/pki-bundle", "version": 1, "files": {}}'
_PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n"


def test_a_plain_pki_bundle_is_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = write_stack(tmp_path, "prod", {**stack_values("prod"),
                                          "multizone:pkiBundle": _BUNDLE_TEXT})
    proc = run(path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: multizone:pkiBundle: in plain text")
    assert "pulumi config set --secret multizone:pkiBundle < FILE" in lines[0]
    assert "git history" in lines[0]


@pytest.mark.parametrize("value", ["", "anything", {"secure": 3}, {"secure": "v1:x", "y": 1},
                                   ["v1:x"]])
def test_any_pki_bundle_that_is_not_a_secure_value_is_refused(tmp_path: Path,
                                                             value: object) -> None:
    path = write_stack(tmp_path, "prod", {**stack_values("prod"), "multizone:pkiBundle": value})
    problems = check(path)
    assert len(problems) == 1 and "multizone:pkiBundle: in plain text" in problems[0], problems


def test_a_secure_pki_bundle_is_accepted(tmp_path: Path) -> None:
    path = write_stack(tmp_path, "prod", {**stack_values("prod"),
                                          "multizone:pkiBundle": {"secure": "v1:AAAA"}})
    proc = run(path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{path}: valid"]


@pytest.mark.parametrize(("key", "value"), [
    ("multizone:sshKey", _PEM_KEY),
    ("multizone:ssh", {**stack_values("prod")["multizone:ssh"], "privateKey": _PEM_KEY}),
    ("multizone:extra", [_BUNDLE_TEXT]),
])
def test_a_private_key_in_any_plain_setting_is_refused(tmp_path: Path, key: str,
                                                       value: object) -> None:
    path = write_stack(tmp_path, "prod", {**stack_values("prod"), key: value})
    problems = check(path)
    assert problems == [f"{path}: {key}: in plain text, so a private key is in a committed "
                        f"file; remove it and run `pulumi config set --secret {key} < FILE`, "
                        "then remove the plain text from the git history (and treat the keys "
                        "as leaked if it was pushed)"]


@pytest.mark.parametrize(("content", "expected"), [
    ("- config\n- x\n", "the top level is a list, not a mapping"),
    ("just text\n", "the top level is text, not a mapping"),
    ("", "the top level is empty"),
])
def test_a_stack_file_whose_top_level_is_not_a_mapping_is_one_line(
        tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(content)
    with pytest.raises(StackFileError) as caught:
        config_values(path)
    assert isinstance(caught.value, ConfigError)
    assert str(caught.value).startswith(f"{path}: {expected}")


def test_a_broken_stack_file_through_bin_mzk_check_stack_is_one_line_exit_2(
        tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(_prod_text() + "  multizone:broken: [unclosed\n")
    proc = subprocess.run([str(ROOT / "bin" / "mzk"), "check-stack", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("mzk: ")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"{path}: line ") and "not valid YAML" in errors[0]
    assert "Traceback" not in proc.stderr
