"""Bad input and missing tools: one line, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.review.conftest import ROOT


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "components.review", *args], cwd=ROOT,
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **env})


def test_unknown_stack() -> None:
    out = run("render", "staging")
    assert out.returncode == 2 and out.stderr == (
        "mzk render: stack 'staging': no stacks/Pulumi.staging.yaml; use one of: dev, prod, "
        "test\n")


def test_envs_without_the_pulumi_cli_is_one_line() -> None:
    out = run("envs", "list", PATH=os.path.dirname(sys.executable))  # no `pulumi` there
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "the Pulumi CLI (`pulumi`) is not on PATH" in out.stderr
    assert "Traceback" not in out.stderr


def test_envs_destroy_refuses_prod() -> None:
    out = run("envs", "destroy", "prod")
    assert out.returncode == 2 and "envs destroy prod: refused" in out.stderr


def test_envs_new_needs_a_number() -> None:
    out = run("envs", "new", "abc")
    assert out.returncode == 2 and "'abc' is not a pull request number" in out.stderr
