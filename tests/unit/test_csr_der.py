"""The DER reader (bootstrap.node.asn1_der) against what `cryptography` writes: requests,
keys of every kind our rules look at, certificates; malformed input is refused."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from csr_support import KEY, Record, instances, make_csr, pem_csr, registered

from bootstrap.node import asn1_der
from bootstrap.node.csr_rules import decide

RECORD = Record(*instances())


def request(csr: dict[str, Any]) -> bytes:
    return asn1_der.request_der(csr["spec"]["request"])


def test_parser_reads_what_cryptography_wrote() -> None:
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "a"),
                                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "b")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "c")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "system:node:n")]),
    ])
    sans = x509.SubjectAlternativeName([
        x509.DNSName("n.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("fd00::1")), x509.RFC822Name("x@example.org"),
        x509.UniformResourceIdentifier("spiffe://x")])
    built = (x509.CertificateSigningRequestBuilder().subject_name(subject)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
             .add_extension(sans, False).sign(KEY, hashes.SHA256()))
    got = asn1_der.parse_csr(built.public_bytes(serialization.Encoding.DER))
    assert got.common_names == ["system:node:n"]
    assert got.organizations == ["a", "b", "c"]
    assert got.dns_names == ["n.example"]
    assert got.ip_addresses == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1")]
    assert got.other_sans == ["email", "URI"]
    assert got.key_algorithm == "1.2.840.10045.2.1"  # id-ecPublicKey
    assert got.public_key == asn1_der.PublicKey("EC", 0, "P-256")


def test_parser_reads_a_request_without_extensions() -> None:
    got = asn1_der.parse_csr(request(make_csr(cn="system:node:n7")))
    assert (got.common_names, got.dns_names, got.ip_addresses) == (["system:node:n7"], [], [])


@pytest.mark.parametrize("key,expected", [
    (lambda: ec.generate_private_key(ec.SECP384R1()), ("EC", 0, "P-384")),
    (lambda: ec.generate_private_key(ec.SECP521R1()), ("EC", 0, "P-521")),
    (lambda: ec.generate_private_key(ec.SECP256K1()), ("EC", 0, "secp256k1")),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
     ("RSA", 1024, "")),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), ("RSA", 2048, "")),
    (lambda: rsa.generate_private_key(public_exponent=3, key_size=3072), ("RSA", 3072, "")),
], ids=["p384", "p521", "secp256k1", "rsa1024", "rsa2048", "rsa3072-e3"])
def test_the_request_key_is_read_as_it_is(key: Any, expected: tuple[str, int, str]) -> None:
    private = key()
    got = asn1_der.parse_csr(request(make_csr(pem=pem_csr(key=private)))).public_key
    assert (got.algorithm, got.bits, got.curve) == expected
    if got.algorithm == "RSA":  # the numbers too: they verify identity signatures
        numbers = private.public_key().public_numbers()
        assert (got.modulus, got.exponent) == (numbers.n, numbers.e)


def test_an_ed25519_key_is_named_by_its_oid() -> None:
    der = request(make_csr(pem=pem_csr(key=ed25519.Ed25519PrivateKey.generate())))
    assert asn1_der.parse_csr(der).public_key.algorithm == "1.3.101.112"


def test_a_certificate_gives_its_key_and_its_end() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloud")])
    end = dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC)  # GeneralizedTime after 2049
    for not_after in (dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.UTC), end):
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(7)
                .not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
                .not_valid_after(not_after).sign(key, hashes.SHA256()))
        der = cert.public_bytes(serialization.Encoding.DER)
        assert asn1_der.certificate_not_after(der) == not_after.timestamp()
        assert asn1_der.certificate_key(der).modulus == key.public_key().public_numbers().n


@pytest.mark.parametrize("mangle", [lambda d: d[:-10], lambda d: d + b"\x00",
                                    lambda d: b"\x30\x03\x02\x01\x00", lambda d: b""])
def test_malformed_requests_are_denied(mangle: Any) -> None:
    der = request(make_csr())
    with pytest.raises(ValueError):
        asn1_der.parse_csr(mangle(der))
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(mangle(der)) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    decision, reason = decide(make_csr(pem=pem), RECORD, registered)
    assert decision == "deny" and "malformed" in reason


def test_request_that_is_not_pem_is_denied() -> None:
    csr = make_csr()
    csr["spec"]["request"] = base64.b64encode(b"hello").decode()
    assert decide(csr, RECORD, registered) == ("deny", "malformed certificate request: "
                                                       "no PEM CERTIFICATE REQUEST block")
