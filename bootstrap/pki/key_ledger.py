"""Which keys without a public half this PKI directory has made: a listed key that is
missing was lost, not never made.

The CAs and the service-account key leave evidence beside them (a certificate, `sa.pub`),
so a missing one is recognised as lost (`authority`). The Secrets encryption key and the
egress tunnel keys have none: a missing one looks exactly like one never made, and making it
again would leave every Secret unreadable or every tunnel refused. So each is listed here,
by its path in the PKI directory, when it is made or first seen, and taken off only when it
is removed on purpose (a tunnel key whose host left the control plane) or forgotten on
purpose (`python -m bootstrap pki ... --forget-lost-key PATH`).

`DIR/local/keys-made.json`: {"keys": ["local/encryption-keys.yaml", ...]}, 0644 (names only).
A directory written before this file existed has none: its keys are listed as they are seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from bootstrap.errors import ConfigError, PKIError
from bootstrap.pki.files import PRIVATE_DIR_NAMES, Tree
from bootstrap.pki.layout import CERT_MODE, LOCAL

LEDGER = f"{LOCAL}/keys-made.json"
PRIVATE = PRIVATE_DIR_NAMES | {LOCAL, "egress-tunnel"}  # as `generate` opens the PKI


def listed(tree: Tree) -> set[str]:
    raw = tree.read(LEDGER)
    if raw is None:
        return set()
    try:
        keys = json.loads(raw)["keys"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise TypeError("keys is not a list of paths")
    except (ValueError, KeyError, TypeError) as err:
        raise PKIError(f"{tree.full(LEDGER)}: not a list of the keys made ({err}); restore "
                       "it from the bundle or your backup") from err
    return set(keys)


def update(tree: Tree, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
    """Add and remove paths; written only when that changes the list."""
    before = listed(tree)
    after = (before | set(add)) - set(remove)
    if after != before:
        tree.write(LEDGER, json.dumps({"keys": sorted(after)}, indent=1).encode() + b"\n",
                   CERT_MODE, durable=True)


def refuse_lost(tree: Tree, rel: str, what: str, consequence: str) -> None:
    """Raise when `rel` (missing) was made before: one line, how to proceed."""
    if rel in listed(tree):
        raise PKIError(f"{tree.full(rel)}: {what} is missing, but this PKI made it earlier "
                       f"({consequence}). Restore it from the bundle or your backup (bin/mzk "
                       "pki import FILE DIR); to make a new one on purpose, run python -m "
                       f"bootstrap pki INVENTORY --out DIR --forget-lost-key {rel}")


def forget(pki_dir: str | Path, rels: Iterable[str]) -> list[str]:
    """Take lost keys off the list, so that the next apply makes new ones. A key that is
    still there, or was never listed, is refused: forgetting is for lost keys only."""
    try:
        tree = Tree.open(str(pki_dir), private=PRIVATE)
    except (OSError, PKIError) as err:
        raise ConfigError(f"--out {pki_dir}: not a PKI directory to forget keys in ({err}); "
                          "give the PKI directory") from err
    with tree:
        tree.fix_modes = True
        known = listed(tree)
        for rel in rels:
            if rel not in known:
                raise ConfigError(f"--forget-lost-key {rel}: not a key this PKI made (made: "
                               f"{', '.join(sorted(known)) or 'none listed'}); give one of "
                               "those paths")
            if tree.read(rel) is not None:
                raise ConfigError(f"--forget-lost-key {rel}: the key is present, not lost; "
                               "nothing to forget")
        update(tree, remove=rels)
    return sorted(rels)
