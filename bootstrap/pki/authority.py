"""The PKI's own keys under DIR/local/pki: the CAs (and a rotation's incoming CA) and the
service-account signing pair. New ones are made only for a new PKI.

A PKI is new while it has issued nothing: no kubernetes-ca certificate and no host
directory. For a new PKI every missing CA and the service-account key are made, the
kubernetes-ca certificate last, so that a first run cut short is still new and the next run
completes it. Once a PKI is established, a missing key is never silently replaced: the hosts
trust its CAs and verify every service-account token with its `sa.pub`, so a new one would
break them on the next apply. A missing CA certificate, or a missing `sa.key`, stops the run
with one line saying how to proceed: restore it from the bundle or a backup, or replace it on
purpose (`rotate-ca` for a CA, `pki --rotate-sa-key` for the service-account key).

A CA *key* may be absent by design (kept off this machine, `pki.ca_keys_on_hosts: false`):
the CA then only checks leaves, and a leaf that must be issued is refused (see `issue`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from dataclasses import dataclass

from cryptography import x509

from bootstrap.errors import PKIError
from bootstrap.inventory import Inventory
from bootstrap.pki import certs
from bootstrap.pki.files import Tree
from bootstrap.pki.layout import CERT_MODE, KEY_MODE, LOCAL
from bootstrap.pki.table import CA, CAS

CLUSTER_CA_CERT = f"{LOCAL}/pki/{CAS[0].base}.crt"  # kubernetes-ca: a PKI exists once it does
SA_KEY_PATH, SA_PUB_PATH = f"{LOCAL}/pki/sa.key", f"{LOCAL}/pki/sa.pub"
RETIRED = f"{LOCAL}/pki/retired"


def is_new(root: Tree) -> bool:
    """Whether the PKI has issued nothing yet: no kubernetes-ca certificate, no host
    directory (nor anything else beside `local/`)."""
    if root.read(CLUSTER_CA_CERT) is not None:
        return False
    return not set(root.names("")) - {LOCAL}


@dataclass(frozen=True)
class CAMaterial:
    """The CA that signs (during a rotation, the incoming one once leaves switch) and the
    bundle hosts trust (the signing CA first, then the other one of a rotation)."""

    spec: CA
    cert: x509.Certificate
    cert_pem: bytes
    key: certs.PrivateKey | None  # None: the key is kept elsewhere, leaves are only checked
    key_pem: bytes | None
    trust_pem: bytes = b""
    trusted: tuple[x509.Certificate, ...] = ()




def ensure_cas(root: Tree, inventory: Inventory, key_spec: certs.KeySpec, now: dt.datetime,
               written: list[str], *, new: bool) -> tuple[dict[str, CAMaterial], list[str]]:
    """Every CA, loaded (and checked against its key where the key is here); for a `new`
    PKI, the missing ones made, kubernetes-ca last."""
    cas: dict[str, CAMaterial] = {}
    warnings: list[str] = []
    rotation = read_rotation(root)
    for ca in sorted(CAS, key=lambda c: c is CAS[0]):  # kubernetes-ca last: see is_new
        crt, key = f"{LOCAL}/pki/{ca.base}.crt", f"{LOCAL}/pki/{ca.base}.key"
        cert_pem, key_pem = root.read(crt), root.read(key)
        if cert_pem is None:
            if not new:
                raise PKIError(f"{root.full(crt)}: missing, and this PKI is not new (it has "
                               "issued certificates): a new {ca.name} would be trusted by no "
                               "host. Restore it (and its key) from the bundle or your backup "
                               "(bin/mzk pki import FILE DIR); a CA is only replaced by "
                               "`rotate-ca`".replace("{ca.name}", ca.name))
            # A new PKI: a key left without its certificate by a first run cut short is
            # replaced with the rest (nothing was issued with it).
            cert_pem, key_pem = _new_ca(root, ca, crt, key, inventory, key_spec, now, written)
        current = _load_ca(ca, root.full(crt), cert_pem, root.full(key), key_pem, now,
                           warnings, inventory.pki.renew_before_days)
        phase = rotation.get(ca.name)
        if phase is None:
            cas[ca.name] = dataclasses.replace(current, trust_pem=current.cert_pem,
                                               trusted=(current.cert,))
            continue
        incoming = _ensure_next(root, ca, inventory, key_spec, now, written, warnings,
                                create=phase == "trust")
        signing, other = (current, incoming) if phase == "trust" else (incoming, current)
        cas[ca.name] = dataclasses.replace(signing, trust_pem=signing.cert_pem + other.cert_pem,
                                           trusted=(signing.cert, other.cert))
    return {ca.name: cas[ca.name] for ca in CAS}, warnings


def _new_ca(root: Tree, ca: CA, crt: str, key: str, inventory: Inventory,
            key_spec: certs.KeySpec, now: dt.datetime, written: list[str]) -> tuple[bytes, bytes]:
    """A new CA's certificate and key, written (key first, durably) at `crt` and `key`."""
    new_key = certs.new_key(key_spec)
    cert_pem = certs.cert_pem(certs.new_ca(ca.name, new_key, now,
                                           inventory.pki.ca_validity_days))
    key_pem = certs.key_pem(new_key)
    root.write(key, key_pem, KEY_MODE, durable=True)
    root.write(crt, cert_pem, CERT_MODE, durable=True)
    written += [root.full(key), root.full(crt)]
    return cert_pem, key_pem


ROTATION = f"{LOCAL}/pki/rotation.json"  # {"<CA name>": "trust" | "switch"}
ROTATION_PHASES = ("trust", "switch")


def next_paths(ca: CA) -> tuple[str, str]:
    """Where a rotation keeps the incoming CA until it retires the outgoing one."""
    return f"{LOCAL}/pki/next/{ca.base}.crt", f"{LOCAL}/pki/next/{ca.base}.key"


def read_rotation(root: Tree) -> dict[str, str]:
    raw = root.read(ROTATION)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise PKIError(f"{root.full(ROTATION)}: not JSON; restore it or finish the rotation "
                       "by hand") from err
    names = {ca.name for ca in CAS}
    if not isinstance(data, dict) or not all(
            k in names and v in ROTATION_PHASES for k, v in data.items()):
        raise PKIError(f"{root.full(ROTATION)}: not a rotation state ({{CA name: trust | "
                       "switch}}); restore it")
    return dict(data)


def _ensure_next(root: Tree, ca: CA, inventory: Inventory, key_spec: certs.KeySpec,
                 now: dt.datetime, written: list[str], warnings: list[str],
                 create: bool) -> CAMaterial:
    crt, key = next_paths(ca)
    cert_pem, key_pem = root.read(crt), root.read(key)
    if cert_pem is None or key_pem is None:
        if not create:
            raise PKIError(f"{root.full(crt)}: the incoming {ca.name} of a rotation is missing; "
                           "restore it (the hosts already trust it)")
        cert_pem, key_pem = _new_ca(root, ca, crt, key, inventory, key_spec, now, written)
    return _load_ca(ca, root.full(crt), cert_pem, root.full(key), key_pem, now, warnings,
                    inventory.pki.renew_before_days)


def _load_ca(ca: CA, crt_path: str, cert_pem: bytes, key_path: str, key_pem: bytes | None,
             now: dt.datetime, warnings: list[str], renew_before_days: int) -> CAMaterial:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise PKIError(f"{crt_path}: not a PEM certificate ({err}); restore the CA "
                       "certificate") from err
    facts = certs.facts(cert)
    if not facts.is_ca:
        raise PKIError(f"{crt_path}: not a CA certificate; restore the {ca.name} CA")
    if facts.cn != ca.name:
        raise PKIError(f"{crt_path}: CN is {facts.cn!r}, the table wants {ca.name!r}; "
                       "restore the right CA certificate")
    if facts.not_after <= now:
        raise PKIError(f"{crt_path}: the {ca.name} CA expired on {facts.not_after:%Y-%m-%d}; "
                       "rotate the CA (a new CA means new certificates on every host)")
    left = facts.not_after - now
    if left <= dt.timedelta(days=renew_before_days):
        warnings.append(f"{crt_path}: the {ca.name} CA expires in {left.days} days "
                        f"({facts.not_after:%Y-%m-%d}); the certificates it signs end with it "
                        "and can no longer be renewed: rotate the CA")
    key = None
    if key_pem is not None:
        try:
            key = certs.load_key(key_pem)
        except ValueError as err:
            raise PKIError(f"{key_path}: not a readable private key ({err}); restore it") \
                from err
        if not certs.same_public_key(cert, key):
            raise PKIError(f"{key_path}: does not match {os.path.basename(crt_path)}; restore "
                           "the pair that belongs together")
    return CAMaterial(spec=ca, cert=cert, cert_pem=cert_pem, key=key, key_pem=key_pem)


def ensure_sa(root: Tree, key_spec: certs.KeySpec, written: list[str], *, new: bool,
              rotate: bool = False, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """sa.key/sa.pub: the service-account signing pair. sa.pub always follows sa.key.
    A missing sa.key is made only for a new PKI, or on purpose (`rotate`: the old pair is
    kept under local/pki/retired/, and every token it signed stops being accepted)."""
    key_pem = root.read(SA_KEY_PATH)
    if rotate:
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S")
        for rel in (SA_KEY_PATH, SA_PUB_PATH):
            old = root.read(rel)
            if old is not None:
                kept = f"{RETIRED}/{os.path.basename(rel).replace('.', f'-{stamp}.')}"
                root.write(kept, old, KEY_MODE if rel == SA_KEY_PATH else CERT_MODE,
                           durable=True)
                written.append(root.full(kept))
        key_pem = None
    elif key_pem is None and not new:
        had = "sa.pub is here: the API servers verify every service-account token with it" \
            if root.read(SA_PUB_PATH) is not None else "this PKI is not new"
        raise PKIError(f"{root.full(SA_KEY_PATH)}: missing, but {had}; a new key would "
                       "end every token on the next apply. Restore it from the bundle or "
                       "your backup (bin/mzk pki import FILE DIR), or replace it on purpose: "
                       "python -m bootstrap pki INVENTORY --out DIR --rotate-sa-key")
    if key_pem is not None:
        try:
            key = certs.load_key(key_pem)
        except ValueError as err:
            raise PKIError(f"{root.full(SA_KEY_PATH)}: not a readable private key ({err}); "
                           "restore it") from err
    else:
        key = certs.new_key(key_spec)
        key_pem = certs.key_pem(key)
        root.write(SA_KEY_PATH, key_pem, KEY_MODE, durable=True)
        written.append(root.full(SA_KEY_PATH))
    pub_pem = certs.public_pem(key)
    if root.write(SA_PUB_PATH, pub_pem, CERT_MODE, durable=True):
        written.append(root.full(SA_PUB_PATH))
    return key_pem, pub_pem
