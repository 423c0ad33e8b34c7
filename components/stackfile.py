"""Check stack files without the Pulumi engine: `python -m components.stackfile FILE...`.

`pulumi preview` stops on bad settings too, but needs the CLI, a backend and credentials,
and exits with Pulumi's own code. This reads `stacks/Pulumi.<stack>.yaml` the way the engine
hands it to the program and runs the same validation (`settings.from_config`), so a pull
request can be checked anywhere: one line per mistake, exit code 2. The zones are checked
against the region's naming only; AWS's list of available zones needs credentials.

Key material never sits in a stack file in plain text: the file is committed, so a plain
`multizone:pkiBundle` (every CA key of the cluster) or any value holding a PEM private key is
refused, with the fix (`pulumi config set --secret ...`, and the history to clean).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bootstrap import safe_yaml
from bootstrap.errors import ConfigError
from components.settings import NS, SettingsError, from_config

_STACK_FILE = re.compile(r"Pulumi\.([A-Za-z0-9_.-]+)\.ya?ml\Z", re.ASCII)
PKI_BUNDLE = f"{NS}:pkiBundle"  # the one secret the engine reads itself (cluster_bootstrap)
# What key material looks like in text: a PEM private key, or a PKI bundle (which holds them).
_KEY_MATERIAL = re.compile(r"PRIVATE KEY-----|multizone-k8s/pki-bundle")


class StackFileError(ConfigError, ValueError):
    """A stack file that cannot be read as one: the message is the whole line."""


def stack_name(path: Path) -> str:
    match = _STACK_FILE.fullmatch(path.name)
    if not match:
        raise StackFileError(f"{path}: not a stack file; name it Pulumi.<stack>.yaml")
    return match.group(1)


def config_values(path: Path) -> dict[str, Any]:
    """The file's `config:` mapping, as YAML values. Read by `bootstrap.safe_yaml`, like the
    inventory: bounded in size and alias expansion, UTF-8 only, every key text and given
    once (the Pulumi CLI refuses a key given twice too)."""
    try:
        data = safe_yaml.load(path, what="it", fix="check the path")
    except ConfigError as err:
        raise StackFileError(str(err)) from err
    if not isinstance(data, dict):
        shown = "empty" if data is None else f"{_kind(data)}, not a mapping"
        raise StackFileError(f"{path}: the top level is {shown}; a stack file is a mapping "
                             "with the settings under 'config:'")
    if not isinstance(data.get("config"), dict):
        raise StackFileError(f"{path}: config: missing; put the settings under a top-level "
                             "'config:' mapping")
    return dict(data["config"])


def _kind(value: Any) -> str:
    return {list: "a list", str: "text", int: "a number", float: "a number",
            bool: "a boolean"}.get(type(value), f"a {type(value).__name__}")


def plaintext_secrets(path: Path, values: dict[str, Any]) -> list[str]:
    """One line per setting that holds key material in plain text: `multizone:pkiBundle`
    that is not a `secure:` value, and any plain value with a private key or a bundle in it.
    The file is committed: the fix is the encrypted setting and a history without it."""
    problems = []
    bundle = values.get(PKI_BUNDLE)
    if PKI_BUNDLE in values and not (isinstance(bundle, dict) and set(bundle) == {"secure"}
                                     and isinstance(bundle["secure"], str)):
        problems.append(_leak(path, PKI_BUNDLE, "the cluster's CA keys are"))
    for key, value in values.items():
        if key != PKI_BUNDLE and _holds_key_material(value):
            problems.append(_leak(path, str(key), "a private key is"))
    return problems


def _leak(path: Path, key: str, what: str) -> str:
    return (f"{path}: {key}: in plain text, so {what} in a committed file; remove it and run "
            f"`pulumi config set --secret {key} < FILE`, then remove the plain text from the "
            "git history (and treat the keys as leaked if it was pushed)")


def _holds_key_material(value: Any) -> bool:
    """Whether a plain (not `secure:`) value holds a private key or a PKI bundle."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return False
        return any(_holds_key_material(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_key_material(v) for v in value)
    return isinstance(value, str) and bool(_KEY_MATERIAL.search(value))


def as_engine_config(values: dict[str, Any]) -> dict[str, str]:
    """Values as the engine passes them to a program: JSON for structures and booleans'
    text for booleans, plain text for other scalars."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict | list):
            out[key] = json.dumps(value)
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = str(value)
    return out


def check(path: Path) -> list[str]:
    """Every problem of one stack file, one line each; empty when it is valid."""
    try:
        stack = stack_name(path)
        values = config_values(path)
    except StackFileError as err:
        return [str(err)]
    leaks = plaintext_secrets(path, values)
    if leaks:
        return leaks
    # The one secret the engine reads itself: a PKI bundle to import on the first `up`
    # (components/cluster_bootstrap.py); not a setting, so not checked further here.
    values.pop(PKI_BUNDLE, None)
    secret = [k for k, v in values.items() if isinstance(v, dict) and "secure" in v]
    if secret:
        return [f"{path}: {k}: stored encrypted, which only the Pulumi engine can read; "
                f"keep settings in plain text (no setting here is a secret)" for k in secret]
    config = {k: v for k, v in as_engine_config(values).items()
              if isinstance(k, str) and (k.startswith(f"{NS}:") or k == "aws:region")}
    try:
        from_config(config, stack)
    except SettingsError as err:
        return [f"{path}: {line}" for line in err.problems]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m components.stackfile stacks/Pulumi.<stack>.yaml ...",
              file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        problems = check(path)
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            print(f"{path}: valid")
        failed = failed or bool(problems)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
