"""Keys and X.509 certificates: make them, and tell whether an existing one still fits.

Everything returns or takes PEM bytes, so that placement (files on disk, files on hosts)
stays a separate step.

Beyond the document's "kind" table: an ECDSA certificate never carries keyEncipherment
(RFC 5480, section 3; RSA ones keep it), our CAs have pathLenConstraint 0 (they sign leaves
only), and a leaf ends at the latest with its CA; such a leaf is not re-issued for being in
its renewal window, since a new one could not last longer (the CA needs rotating).
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from bootstrap.pki.table import CA_PATH_LENGTH, KIND_USAGES, NOT_FOR_ECDSA, SANs

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
CLOCK_SKEW = dt.timedelta(minutes=5)  # not_before is back-dated so skewed clocks agree
_EKU = {"server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
        "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH}


@dataclass(frozen=True)
class KeySpec:
    key_type: str  # "rsa" | "ecdsa"
    rsa_bits: int = 2048


def new_key(spec: KeySpec) -> PrivateKey:
    if spec.key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=spec.rsa_bits)


def key_pem(key: PrivateKey) -> bytes:
    """Traditional PEM ("RSA PRIVATE KEY" / "EC PRIVATE KEY"), as Kubernetes tools write."""
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key(pem: bytes) -> PrivateKey:
    # Our own files: RSA's slow consistency checks add nothing once the key matched its cert.
    key = serialization.load_pem_private_key(pem, password=None,
                                             unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def key_matches(key: PrivateKey, spec: KeySpec) -> bool:
    if spec.key_type == "ecdsa":
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    return isinstance(key, rsa.RSAPrivateKey) and key.key_size == spec.rsa_bits


def key_usages(kinds: tuple[str, ...], key: PrivateKey | PublicKey) -> frozenset[str]:
    """The key usages of a leaf of these kinds with this key: the document's, less those an
    ECDSA key must not carry (RFC 5480)."""
    return _kind_usages(kinds, isinstance(key, ec.EllipticCurvePrivateKey |
                                          ec.EllipticCurvePublicKey))


def _kind_usages(kinds: tuple[str, ...], ecdsa: bool) -> frozenset[str]:
    usages = frozenset(u for kind in kinds for u in KIND_USAGES[kind][0])
    return usages - NOT_FOR_ECDSA if ecdsa else usages


def ca_key_usages(key: PrivateKey | PublicKey) -> frozenset[str]:
    usages = frozenset({"digital_signature", "key_encipherment", "key_cert_sign"})
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        usages -= NOT_FOR_ECDSA
    return usages


def _key_usage(usages: frozenset[str]) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature="digital_signature" in usages,
                         key_encipherment="key_encipherment" in usages,
                         key_cert_sign="key_cert_sign" in usages, content_commitment=False,
                         data_encipherment=False, key_agreement=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _serial() -> int:
    return secrets.randbits(127) | 1


def new_ca(cn: str, key: PrivateKey, now: dt.datetime, days: int) -> x509.Certificate:
    name = _name(cn)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=CA_PATH_LENGTH),
                       critical=True)
        .add_extension(_key_usage(ca_key_usages(key)), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def new_leaf(cn: str, orgs: tuple[str, ...], kinds: tuple[str, ...], sans: SANs,
             key: PrivateKey, ca_cert: x509.Certificate, ca_key: PrivateKey,
             now: dt.datetime, days: int) -> x509.Certificate:
    """A leaf of the table, signed by the CA, ending at the latest with the CA.

    Built in one step from extension values made once per kind and per CA: ten thousand
    leaves for five thousand nodes are signed per run, so the builder's per-call work is
    a cost worth keeping small."""
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    extensions = [*_leaf_extensions(kinds, isinstance(key, ec.EllipticCurvePrivateKey)),
                  _authority_key_id(ca_cert)]
    if sans.dns or sans.ips:
        general: list[x509.GeneralName] = [x509.DNSName(d) for d in sans.dns]
        general += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in sans.ips]
        extensions.append(x509.Extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False,
                                         x509.SubjectAlternativeName(general)))
    return x509.CertificateBuilder(
        issuer_name=ca_cert.subject, subject_name=_name(cn, orgs),
        public_key=key.public_key(), serial_number=_serial(),
        not_valid_before=_naive_utc(now - CLOCK_SKEW), not_valid_after=_naive_utc(not_after),
        extensions=extensions,
    ).sign(ca_key, hashes.SHA256())


def _naive_utc(when: dt.datetime) -> dt.datetime:
    """What CertificateBuilder.not_valid_before/after would store (its constructor takes
    the value as it is)."""
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


@functools.lru_cache(maxsize=32)
def _leaf_extensions(kinds: tuple[str, ...], ecdsa: bool) -> tuple[x509.Extension, ...]:
    """BasicConstraints, KeyUsage and ExtendedKeyUsage of a leaf of these kinds."""
    return (
        x509.Extension(ExtensionOID.BASIC_CONSTRAINTS, True,
                       x509.BasicConstraints(ca=False, path_length=None)),
        x509.Extension(ExtensionOID.KEY_USAGE, True, _key_usage(_kind_usages(kinds, ecdsa))),
        x509.Extension(ExtensionOID.EXTENDED_KEY_USAGE, False,
                       x509.ExtendedKeyUsage([_EKU[KIND_USAGES[k][1]] for k in kinds])),
    )


@functools.lru_cache(maxsize=16)
def _authority_key_id(ca_cert: x509.Certificate) -> x509.Extension:
    """The CA's subject key identifier, as RFC 5280 wants the leaf's AKI (computed from its
    public key for a CA without one)."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key())  # type: ignore[arg-type]
    return x509.Extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, aki)


# --------------------------------------------------------------------------- inspection


@dataclass(frozen=True)
class CertFacts:
    """What we compare of a certificate, in plain values (tests read these too)."""

    cn: str
    orgs: tuple[str, ...]
    issuer_cn: str
    is_ca: bool
    path_length: int | None  # a CA's pathLenConstraint (None: none, or not a CA)
    key_usages: frozenset[str]
    ext_key_usages: frozenset[str]
    dns: frozenset[str]
    ips: frozenset[str]
    not_after: dt.datetime


def facts(cert: x509.Certificate) -> CertFacts:
    def attr(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
        return [str(a.value) for a in name.get_attributes_for_oid(oid)]

    ext = cert.extensions
    try:
        ku = ext.get_extension_for_class(x509.KeyUsage).value
        usages = frozenset(u for u in ("digital_signature", "key_encipherment",
                                       "key_cert_sign") if getattr(ku, u))
    except x509.ExtensionNotFound:
        usages = frozenset()
    try:
        eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
        names = {v: k for k, v in _EKU.items()}
        ext_usages = frozenset(names.get(oid, oid.dotted_string) for oid in eku)
    except x509.ExtensionNotFound:
        ext_usages = frozenset()
    try:
        san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = frozenset(san.get_values_for_type(x509.DNSName))
        ips = frozenset(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = frozenset(), frozenset()
    try:
        constraints = ext.get_extension_for_class(x509.BasicConstraints).value
        is_ca, path_length = constraints.ca, constraints.path_length
    except x509.ExtensionNotFound:
        is_ca, path_length = False, None
    cns = attr(cert.subject, NameOID.COMMON_NAME)
    issuer = attr(cert.issuer, NameOID.COMMON_NAME)
    return CertFacts(cn=cns[0] if cns else "", orgs=tuple(attr(cert.subject,
                                                                NameOID.ORGANIZATION_NAME)),
                     issuer_cn=issuer[0] if issuer else "", is_ca=is_ca,
                     path_length=path_length, key_usages=usages,
                     ext_key_usages=ext_usages, dns=dns, ips=ips,
                     not_after=cert.not_valid_after_utc)


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Was this leaf issued by this CA? The authority key identifier answers at the cost of
    a comparison (it names the CA's key); the signature is checked only without one."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return signed_by(cert, ca_cert)
    if aki.key_identifier is None:
        return signed_by(cert, ca_cert)
    return aki.key_identifier == ski.digest


def same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def why_stale(cert: x509.Certificate, key: PrivateKey, *, cn: str, orgs: tuple[str, ...],
              kinds: tuple[str, ...], sans: SANs, ca_cert: x509.Certificate,
              key_spec: KeySpec, now: dt.datetime, renew_before: dt.timedelta) -> str | None:
    """Why an existing leaf must be re-issued, or None if it may be kept.

    The caller has already checked that it is signed by its CA (a mismatch there is an
    error, not a reason to re-issue).
    """
    f = facts(cert)
    if not same_public_key(cert, key):
        return "its key file does not match the certificate"
    if not key_matches(key, key_spec):
        return f"its key is not {key_spec.key_type}"
    if f.cn != cn:
        return f"CN is {f.cn!r}, want {cn!r}"
    if tuple(sorted(f.orgs)) != tuple(sorted(orgs)):
        return f"O is {list(f.orgs)}, want {list(orgs)}"
    if cert.issuer != ca_cert.subject:
        return "issued by another CA name"
    want_eku = frozenset(KIND_USAGES[k][1] for k in kinds)
    if f.ext_key_usages != want_eku or f.key_usages != key_usages(kinds, key):
        return "key usages differ from its kind"
    if f.dns != frozenset(sans.dns) or f.ips != frozenset(sans.ips):
        return "SANs differ"
    # A leaf ends at the latest with its CA (new_leaf caps it there): once it does, a new
    # one could not last longer, so the renewal window is no reason to re-issue it (the CA's
    # own expiry is a warning of `generate` and of `check`, and the fix is a new CA).
    if f.not_after - now <= renew_before and f.not_after < ca_cert.not_valid_after_utc:
        return f"expires {f.not_after:%Y-%m-%d}, inside the renewal window"
    if cert.not_valid_before_utc > now + CLOCK_SKEW:
        return "not valid yet"
    return None
