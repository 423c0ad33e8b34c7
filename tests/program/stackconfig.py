"""Read `stacks/Pulumi.<stack>.yaml` into the config map the Pulumi engine would pass.

The CLI hands a program every value as text: scalars as themselves, lists and mappings as
JSON. Tests and the bench go through the same conversion as `components.stackfile`, so they
read the real stack files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.stackfile import as_engine_config, config_values

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("dev", "prod", "test")


def stack_values(stack: str) -> dict[str, Any]:
    """The stack file's `config:` mapping, as YAML values."""
    return config_values(ROOT / "stacks" / f"Pulumi.{stack}.yaml")


def stack_config(stack: str, **overrides: Any) -> dict[str, str]:
    """A stack's engine config; `overrides` replace `multizone:<key>` values."""
    values = stack_values(stack)
    for key, value in overrides.items():
        if value is None:
            values.pop(f"multizone:{key}", None)
        else:
            values[f"multizone:{key}"] = value
    return as_engine_config(values)
