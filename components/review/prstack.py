"""A pull request's test stack, `pr-<number>`, made from the template stack `test`.

Its own cluster name (AWS names and tags must not collide with another pull request's), never
protected, ephemeral, and an expiry date a sweep reads. The file is written to
`stacks/Pulumi.pr-<number>.yaml` in the checkout that runs it and is not committed: the
backend keeps the stack, the expiry travels in the resources' `expires-at` tags.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from components.review.envs import stack_of
from components.review.errors import ReviewError
from components.settings import SettingsError, from_config
from components.stackfile import as_engine_config, config_values

TEMPLATE = "test"
DEFAULT_TTL_DAYS = 3


def stack_name(number: int | str) -> str:
    return stack_of(number)


def runner_cidr(address: str) -> str:
    """One host's address as a CIDR (`198.51.100.7` -> `198.51.100.7/32`): a CI runner is
    admitted alone, never a range."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        raise ReviewError(f"--runner-address {address!r}: not an IP address; give the "
                          "runner's public address, e.g. 198.51.100.7") from None
    if not ip.is_global:
        raise ReviewError(f"--runner-address {ip}: not a public address; give the address "
                          "the runner reaches AWS from (e.g. checkip.amazonaws.com)")
    return f"{ip}/{ip.max_prefixlen}"


def operator_key(path: Path) -> tuple[str, str]:
    """(private key path, public key line) of a CI operator key (an OpenSSH private key
    file, 0600, no passphrase), so the stack logs in with the key the run holds."""
    from cryptography.hazmat.primitives import serialization

    try:
        if path.stat().st_mode & 0o077:
            raise ReviewError(f"--operator-key {path}: readable by others; chmod 600 it")
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as err:
        raise ReviewError(f"--operator-key {path}: cannot read it ({err.strerror})") from err
    except (ValueError, TypeError) as err:
        raise ReviewError(f"--operator-key {path}: not an OpenSSH private key without a "
                          f"passphrase ({err}); make one with ssh-keygen -t ed25519 -N ''") \
            from err
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return str(path.resolve()), f"{public} mzk-ci"


def values(root: Path, number: int | str, now: dt.datetime,
           ttl_days: int = DEFAULT_TTL_DAYS, key: Path | None = None,
           runner_address: str | None = None) -> dict[str, Any]:
    """The template's settings with this pull request's name, expiry and no protection;
    with `key`, the run's operator key; with `runner_address`, that address (alone) added
    to the admin ranges for the run (docs/review.md, "How CI reaches the hosts")."""
    if not 1 <= ttl_days <= 30:
        raise ReviewError(f"--ttl-days {ttl_days}: out of range; use 1..30")
    name = stack_name(number)
    out = config_values(root / "stacks" / f"Pulumi.{TEMPLATE}.yaml")
    out["multizone:clusterName"] = f"mz-{name}"
    out["multizone:ephemeral"] = True
    out["multizone:protect"] = False
    out["multizone:expiresAt"] = (now + dt.timedelta(days=ttl_days)).date().isoformat()
    if key is not None:
        private, public = operator_key(key)
        ssh = dict(out.get("multizone:ssh") or {})
        out["multizone:ssh"] = {**ssh, "privateKeyPath": private, "publicKey": public}
    if runner_address is not None:
        admin = list(out.get("multizone:adminCidrs") or [])
        out["multizone:adminCidrs"] = [*admin, runner_cidr(runner_address)]
    try:
        from_config(as_engine_config(out), name)
    except SettingsError as err:
        raise ReviewError(f"{name}: {err.problems[0]}") from err
    return out


def render(root: Path, number: int | str, now: dt.datetime,
           ttl_days: int = DEFAULT_TTL_DAYS, key: Path | None = None,
           runner_address: str | None = None) -> tuple[Path, str]:
    """(the stack file's path, its text): what `write` writes and `--dry-run` prints."""
    name = stack_name(number)
    body = {"config": values(root, name, now, ttl_days, key, runner_address)}
    return (root / "stacks" / f"Pulumi.{name}.yaml",
            f"# Test stack {name}, made from Pulumi.{TEMPLATE}.yaml by `bin/mzk envs new`; "
            "not committed.\n" + yaml.safe_dump(body, sort_keys=False))


def write(root: Path, number: int | str, now: dt.datetime, ttl_days: int = DEFAULT_TTL_DAYS,
          key: Path | None = None, runner_address: str | None = None) -> Path:
    """Write the stack file atomically (a half-written file would be a broken stack)."""
    path, text = render(root, number, now, ttl_days, key, runner_address)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # settings, no secret: as readable as the committed ones
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
