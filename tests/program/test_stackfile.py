"""`python -m components.stackfile`: stack files checked without the Pulumi engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.stackfile import check
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
    ("Pulumi.prod.yaml", "config: [unclosed\n", "not valid YAML at line 2"),
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
