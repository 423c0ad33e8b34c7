"""A PKI bundle's keys and certificates checked against each other before it is imported.

A bundle that parses can still be wrong in ways that only show once it is live: a key that
is not its certificate's (a hand edit, two exports mixed, another cluster's key under this
cluster's name), a leaf that no CA of the bundle signed. Imported over a working PKI, such a
bundle replaces a good key with a useless one, and the PKI then re-issues or fails far from
the cause. So every private key is checked against its public half, every certificate
against the CA that must have signed it, before anything is written; the first problem is one
line naming the bundle and the file.

What is checked, by path inside the bundle:
- `X.key` beside `X.crt`: the key is the certificate's (for a CA bundle file, its first
  certificate: the one that signs). `X.key` beside `X.pub` (`sa.key`/`sa.pub`): the same key.
- a key under `local/pki` with no certificate or public half: refused (a CA key alone).
- a kubeconfig (`.conf`): its client key is its client certificate's.
- every certificate that is not a CA: signed by the bundle's CA of its issuer's name (the
  current one under `local/pki`, or the incoming one of a rotation under `local/pki/next`).
- every CA certificate outside `local/pki` (what hosts trust): one of the bundle's CAs.
- the SSH tunnel keys (`local/egress-tunnel/*.key`): readable OpenSSH private keys.
- no key missing that the PKI had: `sa.key` where `sa.pub` is, every key the key ledger
  (`local/keys-made.json`) lists. (CA keys may be absent: kept elsewhere by design.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bootstrap.errors import ConfigError
from bootstrap.pki import certs, kubeconfig
from bootstrap.pki.authority import SA_KEY_PATH as SA_KEY
from bootstrap.pki.authority import SA_PUB_PATH as SA_PUB
from bootstrap.pki.key_ledger import LEDGER
from bootstrap.pki.table import CAS

LOCAL_PKI = "local/pki"
TUNNEL_KEYS = "local/egress-tunnel/"
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class _Bad(Exception):
    """One file's problem; `verify` adds the bundle's name and the fix."""

    def __init__(self, rel: str, what: str) -> None:
        super().__init__(what)
        self.rel = rel
        self.what = what


def verify(entries: dict[str, tuple[bytes, int]], source: str) -> None:
    """Refuse (ConfigError, one line) a bundle whose keys and certificates do not belong
    together; see the module docstring."""
    try:
        _verify(entries)
    except _Bad as bad:
        raise ConfigError(f"{source}: {bad.rel}: {bad.what}; the bundle is not one cluster's "
                          "PKI as exported: export it again from the PKI directory or the "
                          "stack that works. Nothing was written") from None


def _verify(entries: dict[str, tuple[bytes, int]]) -> None:
    _check_present(entries)
    cas = _bundle_cas(entries)
    ca_keys = {_spki(c) for found in cas.values() for c in found}
    for rel, (content, _mode) in sorted(entries.items()):
        stem, dot, ext = rel.rpartition(".")
        if not dot:
            continue
        if ext == "key":
            _check_key(rel, stem, content, entries)
        elif ext == "conf":
            _check_kubeconfig(rel, content, cas)
        elif ext == "crt":
            _check_certs(rel, content, cas, ca_keys)


def _check_present(entries: dict[str, tuple[bytes, int]]) -> None:
    if SA_PUB in entries and SA_KEY not in entries:
        raise _Bad(SA_KEY, "missing, but sa.pub is in the bundle (the cluster's tokens need "
                           "that key)")
    if LEDGER in entries:
        try:
            listed = json.loads(entries[LEDGER][0])["keys"]
            if not isinstance(listed, list):
                raise TypeError("keys is not a list")
        except (ValueError, KeyError, TypeError) as err:
            raise _Bad(LEDGER, f"not a list of the keys made ({err})") from None
        for rel in listed:
            if rel not in entries:
                raise _Bad(str(rel), f"missing, but {LEDGER} lists it (the PKI made it)")


def _bundle_cas(entries: dict[str, tuple[bytes, int]]) -> dict[str, list[x509.Certificate]]:
    """CA name -> the bundle's certificates of that CA that may sign (current, incoming)."""
    found: dict[str, list[x509.Certificate]] = {}
    for ca in CAS:
        for rel in (f"{LOCAL_PKI}/{ca.base}.crt", f"{LOCAL_PKI}/next/{ca.base}.crt"):
            if rel in entries:
                cert = _certs(rel, entries[rel][0])[0]
                if not certs.facts(cert).is_ca:
                    raise _Bad(rel, "not a CA certificate")
                found.setdefault(ca.name, []).append(cert)
    return found


def _certs(rel: str, pem: bytes) -> list[x509.Certificate]:
    try:
        loaded = x509.load_pem_x509_certificates(pem)
    except ValueError as err:
        raise _Bad(rel, f"not a PEM certificate ({err})") from None
    if not loaded:
        raise _Bad(rel, "holds no certificate")
    return loaded


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(*_SPKI)


def _check_key(rel: str, stem: str, content: bytes,
               entries: dict[str, tuple[bytes, int]]) -> None:
    if rel.startswith(TUNNEL_KEYS):
        try:
            serialization.load_ssh_private_key(content, password=None)
        except (ValueError, TypeError, AssertionError) as err:
            raise _Bad(rel, f"not an unencrypted OpenSSH private key ({err})") from None
        return
    try:
        key = certs.load_key(content)
    except (ValueError, TypeError) as err:
        raise _Bad(rel, f"not a readable private key ({err})") from None
    public = key.public_key().public_bytes(*_SPKI)
    if f"{stem}.crt" in entries:
        cert_rel = f"{stem}.crt"
        if _spki(_certs(cert_rel, entries[cert_rel][0])[0]) != public:
            raise _Bad(rel, f"does not match {cert_rel} (the key is not that "
                            "certificate's)")
    elif f"{stem}.pub" in entries:
        pub_rel = f"{stem}.pub"
        try:
            theirs = serialization.load_pem_public_key(entries[pub_rel][0]).public_bytes(*_SPKI)
        except (ValueError, TypeError) as err:
            raise _Bad(pub_rel, f"not a PEM public key ({err})") from None
        if theirs != public:
            raise _Bad(rel, f"does not match {pub_rel} (the key is not that public key's)")
    elif rel.startswith(f"{LOCAL_PKI}/"):
        raise _Bad(rel, "a key without its certificate or public half")


def _check_kubeconfig(rel: str, content: bytes,
                      cas: dict[str, list[x509.Certificate]]) -> None:
    try:
        cert_pem, key_pem = kubeconfig.credentials(content)
    except ValueError:
        return  # a kubeconfig without a client certificate (a token) has no pair to check
    cert = _certs(rel, cert_pem)[0]
    try:
        key = certs.load_key(key_pem)
    except (ValueError, TypeError) as err:
        raise _Bad(rel, f"its client key is not a readable private key ({err})") from None
    if not certs.same_public_key(cert, key):
        raise _Bad(rel, "its client key does not match its client certificate")
    _check_signed(rel, cert, cas)


def _check_certs(rel: str, content: bytes, cas: dict[str, list[x509.Certificate]],
                 ca_keys: set[bytes]) -> None:
    for cert in _certs(rel, content):
        if not certs.facts(cert).is_ca:
            _check_signed(rel, cert, cas)
        elif not rel.startswith(f"{LOCAL_PKI}/") and _spki(cert) not in ca_keys:
            raise _Bad(rel, "a CA certificate that is not one of the bundle's CAs")


def _check_signed(rel: str, cert: x509.Certificate,
                  cas: dict[str, list[x509.Certificate]]) -> None:
    issuer = _common_name(cert.issuer)
    candidates: Iterable[x509.Certificate] = cas.get(issuer, [])
    if not any(certs.signed_by(cert, ca) for ca in candidates):
        raise _Bad(rel, f"not signed by the bundle's {issuer or 'CA'} (a certificate of "
                        "another CA, or of another cluster)")


def _common_name(name: x509.Name) -> str:
    found = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = found[0].value if found else ""
    return value if isinstance(value, str) else value.decode(errors="replace")
