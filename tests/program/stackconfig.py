"""Read `stacks/Pulumi.<stack>.yaml` into the config map the Pulumi engine would pass.

The CLI hands a program every value as text: scalars as themselves, lists and mappings as
JSON. Tests and the bench go through the same conversion, so they read the real stack files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("dev", "prod", "test")


def stack_values(stack: str) -> dict[str, Any]:
    """The stack file's `config:` mapping, as YAML values."""
    data = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    return dict(data["config"])


def as_engine_config(values: dict[str, Any]) -> dict[str, str]:
    """Values as the engine passes them: JSON for structures, plain text for scalars."""
    out = {}
    for key, value in values.items():
        if isinstance(value, (dict, list)):
            out[key] = json.dumps(value)
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = str(value)
    return out


def stack_config(stack: str, **overrides: Any) -> dict[str, str]:
    """A stack's engine config; `overrides` replace `multizone:<key>` values."""
    values = stack_values(stack)
    for key, value in overrides.items():
        if value is None:
            values.pop(f"multizone:{key}", None)
        else:
            values[f"multizone:{key}"] = value
    return as_engine_config(values)
