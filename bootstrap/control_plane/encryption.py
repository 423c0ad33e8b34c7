"""The key that encrypts Secrets at rest, kept beside the PKI on the operator's machine.

`DIR/local/encryption-keys.yaml` (0600, DIR being the PKI directory) lists the keys, the
first one encrypting, every one decrypting. It is made once, on the first apply (and listed
in `local/keys-made.json`: once made, a missing file is refused, never made again, since a
new key cannot read the Secrets the old one wrote; see `bootstrap.pki.key_ledger`), and never
leaves the operator's machine except as the API servers' encryption configuration (0600 on
each control-plane host). It is not printed or logged; under `pulumi up` it travels only
inside the bootstrap resource's PKI bundle, a secret of the stack's state
(components/cluster_bootstrap.py).

Rotating (docs/control-plane.md): add a new key second in the list and apply (every API
server can now read it); move it first and apply (new writes use it); rewrite every Secret
(`kubectl get secrets -A -o json | kubectl replace -f -`); remove the old key and apply.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
from pathlib import Path

import yaml

from bootstrap import safe_yaml
from bootstrap.control_plane.config import encryption_config
from bootstrap.errors import ConfigError
from bootstrap.pki import key_ledger
from bootstrap.pki.files import Tree
from bootstrap.pki.issue import KEY_MODE, LOCAL, _write

FILE = "encryption-keys.yaml"
REL = f"{LOCAL}/{FILE}"  # its path in the PKI directory, as the key ledger lists it
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")

HEADER = """\
# Keys that encrypt Kubernetes Secrets at rest (secretbox, 32 bytes, base64).
# The first key encrypts new writes; every key listed can decrypt. Keep this file as safe
# as the CA keys beside it. To rotate, see docs/control-plane.md.
"""


def path_in(pki_dir: Path) -> Path:
    return pki_dir / LOCAL / FILE


def _parse(path: Path, text: str | bytes) -> list[tuple[str, str]]:
    try:
        data = safe_yaml.parse(text, str(path))  # bounded, UTF-8, no duplicate keys
    except ConfigError as err:
        raise ConfigError(f"{err}; restore it from your backup") from err
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: keys: expected a non-empty list of {{name, secret}}; "
                          "restore it from your backup")
    keys = []
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        secret = entry.get("secret") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{path}: keys[{i}].name: use lower-case letters, digits, '-'")
        try:
            raw = base64.b64decode(str(secret), validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(f"{path}: keys[{i}].secret: expected 32 bytes in base64 "
                              "(head -c 32 /dev/urandom | base64)")
        keys.append((name, str(secret)))
    return keys


def ensure(pki_dir: Path, now: dt.datetime | None = None) -> tuple[bytes, bool]:
    """(the API servers' encryption configuration, whether a key was made now). A key that
    was made before and is gone is refused (PKIError), not made again."""
    path = path_in(pki_dir)
    try:
        text: bytes | None = safe_yaml.read_bounded(path)
    except FileNotFoundError:
        text = None
    if text is not None:
        config = encryption_config(_parse(path, text))
        with _ledger_tree(pki_dir) as tree:
            key_ledger.update(tree, add=[REL])  # a directory from before the ledger
        return config, False
    if os.path.isdir(pki_dir / LOCAL):
        with _ledger_tree(pki_dir) as tree:
            key_ledger.refuse_lost(tree, REL, "the Secrets encryption key",
                                   "the Secrets in etcd are encrypted with it: a new key "
                                   "cannot read them")
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dt%H%M%S")
    secret = base64.b64encode(os.urandom(32)).decode()
    content = HEADER + yaml.safe_dump({"keys": [{"name": f"key-{stamp}", "secret": secret}]})
    _write(path, content.encode(), KEY_MODE, durable=True)
    with _ledger_tree(pki_dir) as tree:
        key_ledger.update(tree, add=[REL])
    return encryption_config([(f"key-{stamp}", secret)]), True


def _ledger_tree(pki_dir: Path) -> Tree:
    return Tree.open(str(pki_dir), private=key_ledger.PRIVATE)
