"""A pull request's test stack, `pr-<number>`, made from the template stack `test`.

Its own cluster name (AWS names and tags must not collide with another pull request's), never
protected, ephemeral, and an expiry date a sweep reads. The file is written to
`stacks/Pulumi.pr-<number>.yaml` in the checkout that runs it and is not committed: the
backend keeps the stack, the expiry travels in the resources' `expires-at` tags.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml

from components.review.errors import ReviewError
from components.settings import SettingsError, from_config
from components.stackfile import as_engine_config, config_values

TEMPLATE = "test"
DEFAULT_TTL_DAYS = 3


def stack_name(number: int) -> str:
    if number < 1:
        raise ReviewError(f"pull request {number}: not a pull request number; give e.g. 42")
    return f"pr-{number}"


def values(root: Path, number: int, now: dt.datetime,
           ttl_days: int = DEFAULT_TTL_DAYS) -> dict[str, Any]:
    """The template's settings with this pull request's name, expiry and no protection."""
    if not 1 <= ttl_days <= 30:
        raise ReviewError(f"--ttl-days {ttl_days}: out of range; use 1..30")
    name = stack_name(number)
    out = config_values(root / "stacks" / f"Pulumi.{TEMPLATE}.yaml")
    out["multizone:clusterName"] = f"mz-{name}"
    out["multizone:ephemeral"] = True
    out["multizone:protect"] = False
    out["multizone:expiresAt"] = (now + dt.timedelta(days=ttl_days)).date().isoformat()
    try:
        from_config(as_engine_config(out), name)
    except SettingsError as err:
        raise ReviewError(f"{name}: {err.problems[0]}") from err
    return out


def write(root: Path, number: int, now: dt.datetime, ttl_days: int = DEFAULT_TTL_DAYS) -> Path:
    path = root / "stacks" / f"Pulumi.{stack_name(number)}.yaml"
    body = {"config": values(root, number, now, ttl_days)}
    path.write_text(f"# Test stack of pull request {number}, made from Pulumi.{TEMPLATE}.yaml "
                    "by `bin/mzk envs new`; not committed.\n"
                    + yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path
