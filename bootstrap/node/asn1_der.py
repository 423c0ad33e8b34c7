"""A small DER reader: what the CSR approver and its identity webhook read from PKCS#10
requests, X.509 certificates and public keys.

Only reading, never trusting: a request's self-signature is checked by the API server on
create, a certificate here is a container for a trusted public key (the trust comes from
where the file came from). Standard library only: shipped beside the approver
(bootstrap.node.csr_approver) to the control-plane hosts, which have only python3 >= 3.9.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

OID_CN, OID_O = "2.5.4.3", "2.5.4.10"
OID_EXTENSION_REQUEST, OID_SAN = "1.2.840.113549.1.9.14", "2.5.29.17"
OID_RSA, OID_EC = "1.2.840.113549.1.1.1", "1.2.840.10045.2.1"
EC_CURVES = {"1.2.840.10045.3.1.7": "P-256", "1.3.132.0.34": "P-384", "1.3.132.0.35": "P-521",
             "1.3.132.0.10": "secp256k1"}
OTHER_SAN_KINDS = {0xA0: "otherName", 0x81: "email", 0xA3: "x400Address", 0xA4: "directoryName",
                   0xA5: "ediPartyName", 0x86: "URI", 0x88: "registeredID"}
STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1",
                 0x1E: "utf-16-be", 0x1C: "utf-32-be"}
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
DECODE_ERRORS = (ValueError, binascii.Error, UnicodeDecodeError)


@dataclass(frozen=True)
class PublicKey:
    """What a SubjectPublicKeyInfo holds, as far as our rules care: the algorithm, its size
    (RSA modulus bits) or curve, and for RSA the numbers to verify a signature with."""

    algorithm: str  # "RSA", "EC" or the algorithm's OID
    bits: int = 0
    curve: str = ""  # for EC: "P-256", "P-384", ... or the curve's OID
    modulus: int = 0
    exponent: int = 0

    def describe(self) -> str:
        if self.algorithm == "RSA":
            return f"RSA {self.bits}-bit"
        return f"EC {self.curve}" if self.algorithm == "EC" else f"key algorithm {self.algorithm}"


@dataclass
class CertRequest:
    common_names: list[str] = field(default_factory=list)
    organizations: list[str] = field(default_factory=list)
    dns_names: list[str] = field(default_factory=list)
    ip_addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(
        default_factory=list)
    other_sans: list[str] = field(default_factory=list)  # kinds we never allow: email, URI...
    key_algorithm: str = ""
    public_key: PublicKey = field(default_factory=lambda: PublicKey(""))


def der_items(data: bytes) -> list[tuple[int, bytes]]:
    """Every (tag, contents) element in `data`, which they must fill exactly."""
    items, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated DER element")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise ValueError("unsupported DER tag")
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4 or pos + count > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[pos:pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise ValueError("DER element runs past its container")
        items.append((tag, data[pos:pos + length]))
        pos += length
    return items


def expect(data: bytes, tags: tuple[int, ...], what: str) -> list[tuple[int, bytes]]:
    """The elements of `data`, which must begin with `tags` (in that order)."""
    items = der_items(data)
    if [tag for tag, _ in items[:len(tags)]] != list(tags):
        raise ValueError(f"{what} is not as its standard describes it")
    return items


def der_oid(contents: bytes) -> str:
    if not contents or contents[-1] & 0x80:
        raise ValueError("bad OBJECT IDENTIFIER")
    arcs, value = [], 0
    for byte in contents:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])


def der_unsigned(contents: bytes) -> int:
    """A non-negative INTEGER's value (a key's modulus or exponent)."""
    if not contents or contents[0] & 0x80:
        raise ValueError("a key number that is empty or negative")
    return int.from_bytes(contents, "big")


def _text(tag: int, contents: bytes) -> str:
    if tag not in STRING_CODECS:
        raise ValueError(f"unsupported string type 0x{tag:02x} in the subject")
    return contents.decode(STRING_CODECS[tag])


def parse_spki(spki: bytes) -> PublicKey:
    """A SubjectPublicKeyInfo's contents (AlgorithmIdentifier, BIT STRING key)."""
    (_, algorithm), (_, bits) = expect(spki, (0x30, 0x03), "subjectPublicKeyInfo")[:2]
    parts = expect(algorithm, (0x06,), "the key algorithm")
    oid = der_oid(parts[0][1])
    if not bits or bits[0] != 0:
        raise ValueError("a public key BIT STRING with unused bits")
    if oid == OID_RSA:
        numbers = expect(expect(bits[1:], (0x30,), "an RSA public key")[0][1], (0x02, 0x02),
                         "an RSA public key")
        modulus, exponent = der_unsigned(numbers[0][1]), der_unsigned(numbers[1][1])
        return PublicKey("RSA", modulus.bit_length(), "", modulus, exponent)
    if oid == OID_EC:
        if len(parts) < 2 or parts[1][0] != 0x06:
            raise ValueError("an EC key without a named curve")
        curve = der_oid(parts[1][1])
        return PublicKey("EC", 0, EC_CURVES.get(curve, curve))
    return PublicKey(oid)


def public_key(der: bytes) -> PublicKey:
    """A PEM PUBLIC KEY block's DER (a whole SubjectPublicKeyInfo)."""
    (_, spki), = expect(der, (0x30,), "a public key")
    return parse_spki(spki)


def parse_csr(der: bytes) -> CertRequest:
    """The parts of a PKCS#10 request the rules look at: subject CN and O, SANs, the key."""
    (_, outer), = expect(der, (0x30,), "the request")
    info = expect(expect(outer, (0x30, 0x30, 0x03), "the request")[0][1],
                  (0x02, 0x30, 0x30), "certificationRequestInfo")
    request = CertRequest()
    for _, rdn in expect(info[1][1], (), "the subject"):
        for _, pair in der_items(rdn):
            (_, oid), (tag, value) = expect(pair, (0x06,), "a subject attribute")
            if der_oid(oid) == OID_CN:
                request.common_names.append(_text(tag, value))
            elif der_oid(oid) == OID_O:
                request.organizations.append(_text(tag, value))
    algorithm = expect(info[2][1], (0x30, 0x03), "subjectPublicKeyInfo")[0][1]
    request.key_algorithm = der_oid(expect(algorithm, (0x06,), "the key algorithm")[0][1])
    request.public_key = parse_spki(info[2][1])
    attributes = info[3][1] if len(info) > 3 and info[3][0] == 0xA0 else b""
    for _, attribute in der_items(attributes):
        (_, oid), (_, values) = expect(attribute, (0x06, 0x31), "an attribute")
        if der_oid(oid) != OID_EXTENSION_REQUEST:
            continue
        for _, extensions in der_items(values):
            for _, extension in der_items(extensions):
                parts = expect(extension, (0x06,), "an extension")
                if der_oid(parts[0][1]) == OID_SAN and parts[-1][0] == 0x04:
                    (_, names), = expect(parts[-1][1], (0x30,), "subjectAltName")
                    _add_sans(request, der_items(names))
    return request


def _add_sans(request: CertRequest, names: list[tuple[int, bytes]]) -> None:
    for tag, value in names:
        if tag == 0x82:
            request.dns_names.append(value.decode("ascii"))
        elif tag == 0x87 and len(value) in (4, 16):
            request.ip_addresses.append(ipaddress.ip_address(value))
        elif tag == 0x87:
            raise ValueError(f"an IP address SAN of {len(value)} bytes")
        else:
            request.other_sans.append(OTHER_SAN_KINDS.get(tag, f"0x{tag:02x}"))


def _tbs(certificate: bytes) -> list[tuple[int, bytes]]:
    """A certificate's TBSCertificate elements, the optional [0] version dropped."""
    (_, outer), = expect(certificate, (0x30,), "the certificate")
    tbs = expect(expect(outer, (0x30, 0x30, 0x03), "the certificate")[0][1], (),
                 "tbsCertificate")
    if tbs and tbs[0][0] == 0xA0:
        tbs = tbs[1:]
    if [tag for tag, _ in tbs[:6]] != [0x02, 0x30, 0x30, 0x30, 0x30, 0x30]:
        raise ValueError("tbsCertificate is not as X.509 describes it")
    return tbs


def certificate_key(certificate: bytes) -> PublicKey:
    """The public key an X.509 certificate (DER) carries."""
    return parse_spki(_tbs(certificate)[5][1])


def certificate_not_after(certificate: bytes) -> float:
    """The end of a certificate's validity, as epoch seconds."""
    validity = expect(_tbs(certificate)[3][1], (), "the validity")
    if len(validity) != 2 or validity[1][0] not in (0x17, 0x18):
        raise ValueError("the validity is not two times")
    tag, value = validity[1]
    text = value.decode("ascii")
    stamp = datetime.strptime(text, "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ")
    return stamp.replace(tzinfo=timezone.utc).timestamp()  # noqa: UP017 - python3.9 on hosts


def pem_blocks(pem: bytes) -> list[tuple[str, bytes]]:
    """Every (label, DER) block of a PEM text, in order."""
    return [(label.decode(), base64.b64decode(b"".join(body.split()), validate=True))
            for label, body in PEM_BLOCK.findall(pem)]


def request_der(spec_request: str) -> bytes:
    """A CSR's spec.request: base64 (JSON's []byte) of a PEM CERTIFICATE REQUEST block."""
    pem = base64.b64decode(spec_request or "", validate=True)
    blocks = [der for label, der in pem_blocks(pem) if label == "CERTIFICATE REQUEST"]
    if not blocks:
        raise ValueError("no PEM CERTIFICATE REQUEST block")
    return blocks[0]
