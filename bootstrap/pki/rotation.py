"""Rotating a CA on purpose: the only way a cluster's CA is replaced.

Three phases, each followed by an apply (which rolls every service one host at a time, so
etcd and the API servers stay available throughout):

1. trust:  a new CA is made beside the old one (`local/pki/next/`); every host and
           kubeconfig trusts both (the old one first: it still signs); leaves unchanged.
2. switch: the new CA signs: every leaf and kubeconfig is re-issued by it; hosts still
           trust both, so old and new certificates meet during the roll.
3. retire: the new CA becomes the CA (`local/pki/<base>.crt/.key`); the old one is kept
           under `local/pki/retired/` and no longer trusted anywhere.

The phase of each rotating CA is recorded in `local/pki/rotation.json`, so an interrupted
rotation resumes where it stopped (`python -m bootstrap rotate-ca` again).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from bootstrap.errors import PKIError
from bootstrap.pki.authority import ROTATION, next_paths, read_rotation
from bootstrap.pki.issue import CERT_MODE, KEY_MODE, LOCAL, open_out
from bootstrap.pki.table import CA_BY_NAME

PHASES = ("trust", "switch", "retire")


def state(pki_dir: Path) -> dict[str, str]:
    with open_out(pki_dir) as root:
        return read_rotation(root)


def set_phase(pki_dir: Path, names: list[str], phase: str) -> None:
    """Record `phase` ("trust" or "switch") for these CAs."""
    with open_out(pki_dir) as root:
        current = read_rotation(root)
        current.update(dict.fromkeys(names, phase))
        root.write(ROTATION, json.dumps(current, indent=1, sort_keys=True).encode(),
                   CERT_MODE, durable=True)


def retire(pki_dir: Path, names: list[str], now: dt.datetime | None = None) -> list[str]:
    """The incoming CAs become the CAs; the outgoing ones go to local/pki/retired/.
    Returns the lines of what moved."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S")
    lines = []
    with open_out(pki_dir) as root:
        current = read_rotation(root)
        for name in names:
            if current.get(name) != "switch":
                raise PKIError(f"{name}: not in the switch phase of a rotation "
                               f"({current.get(name, 'not rotating')}); run the earlier "
                               "phases first")
            ca = CA_BY_NAME[name]
            crt, key = f"{LOCAL}/pki/{ca.base}.crt", f"{LOCAL}/pki/{ca.base}.key"
            next_crt, next_key = next_paths(ca)
            new_crt, new_key = root.read(next_crt), root.read(next_key)
            old_crt, old_key = root.read(crt), root.read(key)
            if new_crt is None or new_key is None or old_crt is None:
                raise PKIError(f"{root.full(next_crt)}: the incoming {name} is missing; "
                               "restore it")
            retired = f"{LOCAL}/pki/retired/{ca.base.replace('/', '-')}-{stamp}"
            root.write(f"{retired}.crt", old_crt, CERT_MODE, durable=True)
            if old_key is not None:
                root.write(f"{retired}.key", old_key, KEY_MODE, durable=True)
            root.write(key, new_key, KEY_MODE, durable=True)
            root.write(crt, new_crt, CERT_MODE, durable=True)
            root.unlink(next_crt)
            root.unlink(next_key)
            del current[name]
            lines.append(f"{name}: the new CA is the CA; the old one is in "
                         f"{root.full(retired)}.crt")
        if current:
            root.write(ROTATION, json.dumps(current, indent=1, sort_keys=True).encode(),
                       CERT_MODE, durable=True)
        else:
            root.unlink(ROTATION)
    return lines
