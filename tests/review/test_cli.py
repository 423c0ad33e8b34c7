"""Bad input and missing tools: one line, exit 2, no traceback; what each envs action does
(the Pulumi calls replaced by recorders: the decisions are the CLI's)."""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from components.review import automation, cli
from components.review.envs import StackInfo
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


# --- a stack file that does not parse -------------------------------------------------------

BROKEN = "config:\n  multizone:zones: [eu-west-1a,\n"


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   cwd=root, check=True, capture_output=True)


@pytest.fixture()
def broken_root(tmp_path: Path) -> Path:
    """A git copy of the checkout's stacks and program, committed honest; in the working
    tree prod's file is broken mid-list."""
    for name in ("stacks", "components", "bootstrap"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "Pulumi.pr-*.yaml"))
    for name in ("__main__.py", "Pulumi.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "honest")
    (tmp_path / "stacks" / "Pulumi.prod.yaml").write_text(BROKEN)
    return tmp_path


def test_render_of_a_stack_file_that_does_not_parse_is_one_line(broken_root: Path) -> None:
    out = run("render", "prod", "--root", str(broken_root))
    path = broken_root / "stacks" / "Pulumi.prod.yaml"
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"mzk render: {path}: ") and out.stderr.count("\n") == 1
    assert "YAML" in out.stderr and "Traceback" not in out.stderr
    assert run("render", "test", "--root", str(broken_root)).returncode == 0  # honest file


def test_diff_of_a_stack_file_that_does_not_parse_is_one_line(broken_root: Path) -> None:
    out = run("diff", "prod", "--base", "HEAD", "--root", str(broken_root))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"mzk diff: {broken_root}/stacks/Pulumi.prod.yaml: ")
    assert "Traceback" not in out.stderr


def test_diff_against_a_base_whose_stack_file_does_not_parse_is_one_line(
        broken_root: Path) -> None:
    git(broken_root, "commit", "-q", "-am", "broken")
    git(broken_root, "checkout", "-q", "HEAD~1", "--", "stacks/Pulumi.prod.yaml")
    assert run("diff", "prod", "--base", "HEAD~1", "--root", str(broken_root)).returncode == 0
    out = run("diff", "prod", "--base", "HEAD", "--root", str(broken_root))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("mzk diff: --base HEAD: the stack prod does not render there")
    assert "Pulumi.prod.yaml" in out.stderr and "Traceback" not in out.stderr


# --- envs: pr-<n> stacks only, dry runs, confirmation --------------------------------------

class Recorder:
    """Stands in for the Pulumi calls; records what the CLI asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stacks: Sequence[StackInfo] = ()) -> None:
        self.calls: list[tuple[Any, ...]] = []
        for name in ("up", "destroy", "revoke"):
            monkeypatch.setattr(automation, name, self._record(name))
        monkeypatch.setattr(automation, "stacks", lambda: list(stacks))

    def _record(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, *args, *kwargs.values()))
        return call


def envs(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["envs", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("action", ["new", "up", "destroy", "revoke"])
@pytest.mark.parametrize("name", ["prod", "production", "org/proj/prod", "Prod", "dev", "test",
                                  "pr-042", "abc", "0"])
def test_every_action_refuses_anything_but_a_pull_request(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], action: str,
        name: str) -> None:
    rec = Recorder(monkeypatch)
    code, out, err = envs(capsys, action, name, "--yes-destroy", name) if action == "destroy" \
        else envs(capsys, action, name)
    assert code == 2 and rec.calls == [] and out == ""
    assert err.count("\n") == 1 and "not a pull request's test stack" in err


def test_an_action_without_a_stack_is_refused(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch)
    code, _, err = envs(capsys, "up")
    assert code == 2 and rec.calls == [] and "given nothing" not in err
    assert "not a pull request's test stack" in err


def test_the_pulumi_calls_refuse_other_stacks_themselves() -> None:
    for call in (lambda: automation.up("prod", False), lambda: automation.destroy("prod", False),
                 lambda: automation.revoke("Prod", "198.51.100.7/32", False)):
        with pytest.raises(automation.ReviewError, match="pr-<number> stacks only"):
            call()


def test_up_previews_then_applies_and_dry_run_only_previews(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch)
    assert envs(capsys, "up", "42")[0] == 0
    assert envs(capsys, "up", "pr-42", "--dry-run")[0] == 0
    assert rec.calls == [("up", "pr-42", False), ("up", "pr-42", True)]


def test_destroy_without_a_terminal_or_the_flag_destroys_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("pr-42\n"))  # a pipe, not a person
    code, _, err = envs(capsys, "destroy", "pr-42")
    assert code == 2 and rec.calls == []
    assert err == ("mzk envs: envs destroy pr-42: not confirmed; type the name at a terminal "
                   "or pass --yes-destroy pr-42\n")


def test_destroy_flag_must_name_the_stack(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch)
    for other in ("pr-41", "42", "prod", "yes"):
        code, _, err = envs(capsys, "destroy", "pr-42", "--yes-destroy", other)
        assert code == 2 and "does not name this stack" in err
    assert rec.calls == []
    assert envs(capsys, "destroy", "42", "--yes-destroy", "pr-42")[0] == 0
    assert rec.calls == [("destroy", "pr-42", False)]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_destroy_at_a_terminal_needs_the_name_typed(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch)
    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    code, _, err = envs(capsys, "destroy", "pr-42")
    assert code == 2 and rec.calls == [] and "'yes' is not pr-42; nothing destroyed" in err
    monkeypatch.setattr(sys, "stdin", Terminal("pr-42\n"))
    assert envs(capsys, "destroy", "pr-42")[0] == 0
    assert rec.calls == [("destroy", "pr-42", False)]


def test_destroy_dry_run_needs_no_confirmation_and_destroys_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch)
    code, out, _ = envs(capsys, "destroy", "pr-42", "--dry-run")
    assert code == 0 and rec.calls == [("destroy", "pr-42", True)]
    assert "destroyed and removed" not in out


def test_new_dry_run_writes_nothing_and_shows_the_file(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    Recorder(monkeypatch)
    path = ROOT / "stacks" / "Pulumi.pr-987654.yaml"
    assert not path.exists()
    code, out, _ = envs(capsys, "new", "987654", "--dry-run")
    assert code == 0 and not path.exists()
    assert out.startswith("stacks/Pulumi.pr-987654.yaml: would be written (--dry-run):")
    assert "multizone:clusterName: mz-pr-987654" in out


def test_revoke_needs_the_address_and_honours_dry_run(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch)
    assert envs(capsys, "revoke", "pr-42")[0] == 2
    assert envs(capsys, "revoke", "pr-42", "--runner-address", "10.0.0.1")[0] == 2  # private
    assert envs(capsys, "revoke", "pr-42", "--runner-address", "198.51.100.7", "--dry-run")[0] \
        == 2  # documentation range: not global either
    assert rec.calls == []
    assert envs(capsys, "revoke", "pr-42", "--runner-address", "8.8.4.4", "--dry-run")[0] == 0
    assert rec.calls == [("revoke", "pr-42", "8.8.4.4/32", True)]


def test_a_flag_given_to_an_action_that_does_not_take_it_is_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch)
    code, _, err = envs(capsys, "up", "pr-42", "--yes-destroy", "pr-42")
    assert code == 2 and "--yes-destroy is for envs destroy only" in err
    assert envs(capsys, "sweep", "pr-42")[0] == 2
    assert rec.calls == []


NOW = dt.datetime.now(dt.UTC)
PAST = (NOW - dt.timedelta(days=2)).date().isoformat()
STACKS = [StackInfo("pr-1", {"multizone:expiresAt": PAST}),
          StackInfo("prod", {"multizone:expiresAt": PAST, "multizone:protect": "false"}),
          StackInfo("dev", {"multizone:expiresAt": PAST}),
          StackInfo("pr-2", {"multizone:expiresAt": PAST, "multizone:protect": "yes"})]


def test_sweep_destroys_expired_pr_stacks_only(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch, STACKS)
    code, out, _ = envs(capsys, "sweep")
    assert code == 0 and rec.calls == [("destroy", "pr-1", False)]
    assert "dev: keep: not a pull request's stack" in out
    assert "prod: keep: not a pull request's stack" in out
    assert "pr-2: keep: multizone:protect 'yes' is not understood" in out


def test_sweep_and_list_dry_run_destroy_nothing(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(monkeypatch, STACKS)
    code, out, _ = envs(capsys, "sweep", "--dry-run")
    assert code == 0 and rec.calls == []
    assert "pr-1: would be destroyed and removed (--dry-run)" in out
    assert envs(capsys, "list", "--dry-run")[0] == 0 and rec.calls == []
