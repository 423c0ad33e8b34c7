"""The Pulumi calls behind `bin/mzk envs`, through the Automation API.

The Automation API drives the Pulumi CLI, so none of this runs on a machine without it (the
build machine of this repository has none: the decisions these calls carry out are plain
code in `envs.py` and `cli.py`, tested; these functions are exercised by the workflows).
`require_cli` turns its absence into one line and exit 2. The backend and secrets provider
come from the environment as for the CLI (`PULUMI_BACKEND_URL`, and
`PULUMI_SECRETS_PROVIDER` for new stacks): see docs/review.md.

Every function that changes something takes `dry_run` and, with it, changes nothing: `up`
stops after its preview, `destroy` runs `pulumi destroy --preview-only`, `revoke` lists
the rules it would remove. Each refuses a stack that is not `pr-<number>` again, so no
caller can reach another stack through them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.review.envs import EXPIRY_TAG, StackInfo, address_rules, pr_stack
from components.review.errors import ReviewError

ROOT = Path(__file__).resolve().parents[2]
Echo = Callable[[str], None]


def require_cli() -> None:
    if shutil.which("pulumi") is None:
        raise ReviewError("the Pulumi CLI (`pulumi`) is not on PATH; install it "
                          "(https://www.pulumi.com/docs/install/) and log in to the backend, "
                          "see docs/review.md")


def _only_pr(stack: str) -> None:
    if pr_stack(stack) != stack:
        raise ReviewError(f"{stack!r}: refused; envs acts on pr-<number> stacks only")


def _options() -> Any:
    from pulumi import automation as auto

    # Update plans (`preview --save-plan`, `up --plan`) are behind this flag in the CLI.
    return auto.LocalWorkspaceOptions(
        secrets_provider=os.environ.get("PULUMI_SECRETS_PROVIDER"),
        env_vars={"PULUMI_EXPERIMENTAL": "true"})


def _workspace() -> Any:
    from pulumi import automation as auto

    return auto.LocalWorkspace(work_dir=str(ROOT),
                               secrets_provider=os.environ.get("PULUMI_SECRETS_PROVIDER"))


def _select(stack: str) -> Any:
    """The stack's handle, or a one-line error when the backend has no such stack."""
    from pulumi import automation as auto

    try:
        return auto.select_stack(stack_name=stack, work_dir=str(ROOT), opts=_options())
    except auto.StackNotFoundError:
        raise ReviewError(f"{stack}: no such stack in the backend "
                          f"({os.environ.get('PULUMI_BACKEND_URL', 'the logged-in one')})") \
            from None


def exists(stack: str) -> bool:
    _only_pr(stack)
    require_cli()
    return any(s.name.rsplit("/", 1)[-1] == stack for s in _workspace().list_stacks())


def _tags_and_protection(deployment: Any) -> tuple[dict[str, str], int]:
    """The `expires-at` tag of the stack's resources and how many are protected."""
    tags: dict[str, str] = {}
    protected = 0
    for res in (deployment.deployment or {}).get("resources", []):
        protected += bool(res.get("protect"))
        value = (res.get("inputs", {}).get("tags") or {}).get(EXPIRY_TAG)
        if isinstance(value, str):
            tags.setdefault(EXPIRY_TAG, value)
    return tags, protected


def stacks() -> list[StackInfo]:
    """Every stack of the project in the backend, with what a sweep decides on (only
    pull requests' stacks are read in full: the others are kept whatever they hold)."""
    require_cli()
    ws = _workspace()
    out = []
    for summary in ws.list_stacks():
        name = summary.name
        if pr_stack(name) is None:
            out.append(StackInfo(name))
            continue
        tags, protected = _tags_and_protection(ws.export_stack(name))
        try:
            tags.update(ws.list_tags(name))  # stack tags: Pulumi Cloud only
        except Exception:  # noqa: BLE001, S110 (DIY backends have none)
            pass
        try:
            config = {k: v.value for k, v in ws.get_all_config(name).items()}
        except Exception:  # noqa: BLE001 (no stack file here: the state still tells)
            config = {}
        out.append(StackInfo(name, config, tags, protected))
    return out


def up(stack: str, dry_run: bool, echo: Echo = print) -> None:
    """Preview and save the plan, then apply exactly that plan (`up --plan`): what the log
    shows as previewed is all the update may do; anything else fails the update."""
    from pulumi import automation as auto

    _only_pr(stack)
    require_cli()
    if dry_run and not exists(stack):
        echo(f"{stack}: no such stack yet; up would create it and every resource "
             "(--dry-run: nothing created)")
        return
    handle = auto.create_or_select_stack(stack_name=stack, work_dir=str(ROOT), opts=_options())
    with tempfile.TemporaryDirectory(prefix="mzk-plan-") as scratch:
        plan = str(Path(scratch) / "plan.json")
        preview = handle.preview(plan=plan, diff=True, on_output=echo)
        echo(f"{stack}: preview: {preview.change_summary}")
        if dry_run:
            echo(f"{stack}: --dry-run: the plan is not applied")
            return
        handle.up(plan=plan, on_output=echo)


def destroy(stack: str, dry_run: bool, echo: Echo = print) -> None:
    """Destroy the stack's resources, then forget the stack (its state and history)."""
    _only_pr(stack)
    require_cli()
    handle = _select(stack)
    if dry_run:
        handle.destroy(preview_only=True, on_output=echo)
        echo(f"{stack}: --dry-run: nothing destroyed, the stack is kept")
        return
    handle.destroy(on_output=echo)
    handle.workspace.remove_stack(stack)


def revoke(stack: str, cidr: str, dry_run: bool, echo: Echo = print) -> list[str]:
    """Remove the security-group rules that admit `cidr` (the run's runner), and only them:
    a targeted destroy, which does not run the program."""
    _only_pr(stack)
    require_cli()
    handle = _select(stack)
    urns = address_rules(handle.export_stack().deployment or {}, cidr)
    if not urns:
        echo(f"{stack}: no rule admits {cidr}; nothing to revoke")
    for urn in urns:
        echo(f"{stack}: {'would revoke' if dry_run else 'revoke'} {urn}")
    if urns and not dry_run:
        handle.destroy(target=urns, on_output=echo)
    return urns
