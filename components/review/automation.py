"""The Pulumi calls behind `bin/mzk envs`, through the Automation API.

The Automation API drives the Pulumi CLI, so none of this runs on a machine without it (the
build machine of this repository has none: these functions are exercised by the workflows,
not by the tests). `require_cli` turns its absence into one line and exit 2. The backend and
secrets provider come from the environment as for the CLI (`PULUMI_BACKEND_URL`, and
`PULUMI_SECRETS_PROVIDER` for new stacks): see docs/review.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.review.envs import EXPIRY_TAG, StackInfo
from components.review.errors import ReviewError

ROOT = Path(__file__).resolve().parents[2]


def require_cli() -> None:
    if shutil.which("pulumi") is None:
        raise ReviewError("the Pulumi CLI (`pulumi`) is not on PATH; install it "
                          "(https://www.pulumi.com/docs/install/) and log in to the backend, "
                          "see docs/review.md")


def _workspace() -> Any:
    from pulumi import automation as auto

    return auto.LocalWorkspace(work_dir=str(ROOT),
                               secrets_provider=os.environ.get("PULUMI_SECRETS_PROVIDER"))


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
    """Every stack of the project in the backend, with what a sweep decides on."""
    require_cli()
    ws = _workspace()
    out = []
    for summary in ws.list_stacks():
        name = summary.name
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


def up(stack: str, echo: Callable[[str], None] = print) -> None:
    from pulumi import automation as auto

    require_cli()
    handle = auto.create_or_select_stack(stack_name=stack, work_dir=str(ROOT),
                                         opts=auto.LocalWorkspaceOptions(
                                             secrets_provider=os.environ.get(
                                                 "PULUMI_SECRETS_PROVIDER")))
    handle.up(on_output=echo)


def destroy(stack: str, echo: Callable[[str], None] = print) -> None:
    """Destroy the stack's resources, then forget the stack (its state and history)."""
    from pulumi import automation as auto

    require_cli()
    handle = auto.select_stack(stack_name=stack, work_dir=str(ROOT))
    handle.destroy(on_output=echo)
    handle.workspace.remove_stack(stack)
