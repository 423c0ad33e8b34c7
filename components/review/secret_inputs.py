"""Secret inputs under the mocks: how the SDK marks them on the wire, the plain values
behind them, and the keyed digest a render shows instead of a secret.

Its own module because both sides need it: the mocks (values for AWS's answers, digests for
the reviewer) and the evaluation harness (which top-level inputs were secret).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 (Pulumi's wire signature)
SIG_KEY = "4dabf18193072939515e22adb298388d"


# Keyed digests of secret inputs: a render can say that a secret changed without showing
# it. The key is per process unless given (a diff gives both of its renders the same one).
_DIGEST_KEY = os.urandom(16).hex()


@dataclass(frozen=True)
class Secret:
    """A secret input as a render shows it: never the value, only a keyed digest of it."""

    digest: str


@contextlib.contextmanager
def digest_key(key: str) -> Iterator[None]:
    """Use `key` for secret digests meanwhile (a diff gives both of its sides one key)."""
    global _DIGEST_KEY
    saved, _DIGEST_KEY = _DIGEST_KEY, key
    try:
        yield
    finally:
        _DIGEST_KEY = saved


def secret_digest(value: Any) -> str:
    key = os.environ.get("MZK_SECRET_DIGEST_KEY") or _DIGEST_KEY
    return hmac.new(key.encode(), repr(value).encode(), hashlib.sha256).hexdigest()[:16]


def _unwrap(value: Any) -> Any:
    """Plain values from inputs; which of them were secret is kept by `RecordingMonitor`."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return _unwrap(value["value"])
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _shown(value: Any) -> Any:
    """Inputs with every secret (at any depth) replaced by its `Secret` digest."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return Secret(secret_digest(_unwrap(value["value"])))
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


def _secret_keys(struct: Any) -> frozenset[str]:
    """Top-level input names whose value the SDK sent as a secret."""
    found = set()
    for key, value in struct.fields.items():
        if value.HasField("struct_value"):
            inner = value.struct_value.fields
            if SIG_KEY in inner and inner[SIG_KEY].string_value == SECRET_SIG:
                found.add(key)
    return frozenset(found)
