"""Join tokens: one bootstrap token per node pool, short-lived, rotated by `apply`.

A token is the only secret an auto-scaled node boots with (in its user data), and any
holder can ask for a client certificate under any node name: so each pool has its own
(its group `system:bootstrappers:mzk:<pool>` tells the approver which pool asks), each
lives `hours` (default 24), and `apply` issues a new one once less than half of that is
left; the old one stays valid until it expires (nodes launched from the previous user data
still join) and the controller-manager's token cleaner deletes it then.

The current token of each pool is kept beside the PKI (`local/join-tokens.json`, 0600), so
that plan knows it and the Pulumi program can put it in the pool's launch template as a
secret; the cluster holds it as a `bootstrap.kubernetes.io/token` Secret in kube-system.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.inventory import NodePool
from bootstrap.pki import files

STORE = Path("local") / "join-tokens.json"
GROUP_PREFIX = "system:bootstrappers:mzk:"
DEFAULT_HOURS = 24
_ALPHABET = string.ascii_lowercase + string.digits
_ID = re.compile(r"^[a-z0-9]{6}$")
_SECRET = re.compile(r"^[a-z0-9]{16}$")


@dataclass(frozen=True)
class JoinToken:
    pool: str
    token_id: str
    secret: str
    expires: dt.datetime  # UTC

    @property
    def value(self) -> str:
        """What a kubelet presents: `<id>.<secret>`."""
        return f"{self.token_id}.{self.secret}"

    @property
    def group(self) -> str:
        return GROUP_PREFIX + self.pool

    @property
    def secret_name(self) -> str:
        return f"bootstrap-token-{self.token_id}"

    def manifest(self) -> dict[str, Any]:
        """The kube-system Secret the API server authenticates the token against."""
        return {"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                "metadata": {"name": self.secret_name, "namespace": "kube-system",
                             "labels": {"mzk.io/node-pool": self.pool}},
                "stringData": {
                    "description": f"multizone-k8s join token of node pool {self.pool}",
                    "token-id": self.token_id, "token-secret": self.secret,
                    "expiration": self.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "usage-bootstrap-authentication": "true",
                    "auth-extra-groups": self.group}}


def new(pool: str, hours: int, now: dt.datetime) -> JoinToken:
    def pick(n: int) -> str:
        return "".join(secrets.choice(_ALPHABET) for _ in range(n))
    return JoinToken(pool, pick(6), pick(16),
                     (now + dt.timedelta(hours=hours)).replace(microsecond=0))


def due(token: JoinToken | None, hours: int, now: dt.datetime) -> bool:
    """A pool needs a new token: none yet, or less than half its lifetime left."""
    return token is None or token.expires - now < dt.timedelta(hours=hours) / 2


def refresh(pools: Sequence[NodePool], tokens: dict[str, JoinToken], now: dt.datetime
            ) -> tuple[dict[str, JoinToken], list[str]]:
    """Every pool with a token that is not due: (the tokens, the pools given a new one).
    Tokens of pools no longer listed are dropped (they expire in the cluster on their own)."""
    current, issued = {}, []
    for pool in pools:
        token = tokens.get(pool.name)
        if due(token, pool.join_token_hours, now):
            token = new(pool.name, pool.join_token_hours, now)
            issued.append(pool.name)
        current[pool.name] = token
    return current, issued  # type: ignore[return-value]


def load(pki_dir: Path) -> dict[str, JoinToken]:
    """The current token per pool; a missing or unreadable store holds none."""
    try:
        raw = json.loads((pki_dir / STORE).read_text())
        found = {}
        for pool, t in raw.items():
            if _ID.match(t["id"]) and _SECRET.match(t["secret"]):
                found[pool] = JoinToken(pool, t["id"], t["secret"],
                                        dt.datetime.fromisoformat(t["expires"]))
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def save(pki_dir: Path, tokens: dict[str, JoinToken]) -> None:
    """Atomically, 0600 (the file holds secrets), with the PKI's one writer."""
    body = json.dumps({p: {"id": t.token_id, "secret": t.secret,
                           "expires": t.expires.isoformat()}
                       for p, t in sorted(tokens.items())}, indent=2) + "\n"
    files.write(pki_dir / STORE, body.encode(), 0o600, durable=True)
