"""AWS's pinned instance identity certificates: every one is an intact, self-signed RSA
certificate valid on the day they were pinned, the data file says the truth about each, a
region without one is one clear error, and the data file's reader refuses what it cannot
vouch for."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bootstrap.node import aws_identity_certs as certs
from bootstrap.node import instance_identity as identity

PINNED_ON = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
REGIONS = sorted(certs.PINNED)
# The regions the brief names as the ones clusters most often run in.
COMMON = ("us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2",
          "eu-west-3", "eu-central-1", "eu-north-1", "ap-southeast-1", "ap-southeast-2",
          "ap-northeast-1", "ap-northeast-2", "ap-south-1", "ca-central-1", "sa-east-1")
SOURCES = {"spire", "rspamd", "smallstep"}  # as the data file's header cites them


def cert_of(region: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(certs.certificate_for(region).encode())


@pytest.mark.parametrize("region", REGIONS)
def test_each_pinned_certificate_is_rsa_self_signed_and_valid_when_pinned(region: str) -> None:
    cert = cert_of(region)
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert cert.issuer == cert.subject
    assert cert.signature_hash_algorithm is not None
    key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
               cert.signature_hash_algorithm)  # raises unless the text is intact
    assert cert.not_valid_before_utc <= PINNED_ON <= cert.not_valid_after_utc
    assert str(PINNED_ON.date()) == certs.PINNED_ON
    organization = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    assert [o.value for o in organization] in (["Amazon Web Services LLC"], ["Amazon.com Inc."])


@pytest.mark.parametrize("region", REGIONS)
def test_the_data_file_says_the_truth_about_each_certificate(region: str) -> None:
    pinned, cert = certs.PINNED[region], cert_of(region)
    assert pinned.region == region
    assert (pinned.not_before, pinned.not_after) == (
        str(cert.not_valid_before_utc.date()), str(cert.not_valid_after_utc.date()))
    assert pinned.sources[0] == "spire" and set(pinned.sources) <= SOURCES
    assert len(set(pinned.sources)) == len(pinned.sources)
    # The text is the certificate's canonical PEM: nothing hides around or inside it.
    assert pinned.pem == cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("region", REGIONS)
def test_the_approver_reads_each_certificate_to_the_same_key(region: str) -> None:
    """What the bootstrap writes into the trust file is what the approver's own DER reader
    (not `cryptography`) turns into the key it checks signatures with."""
    key = cert_of(region).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    [trusted] = identity.load_trust(certs.certificate_for(region).encode())
    assert (trusted.modulus, trusted.bits) == (key.public_numbers().n, key.key_size)


def test_a_tampered_certificate_fails_its_self_signature() -> None:
    """The self-signature check above can fail: one changed byte of the signed part is
    noticed (the control for the checks on the real certificates)."""
    cert = cert_of("eu-west-1")
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and cert.signature_hash_algorithm is not None
    tbs = bytearray(cert.tbs_certificate_bytes)
    tbs[-40] ^= 0x01
    with pytest.raises(InvalidSignature):
        key.verify(cert.signature, bytes(tbs), padding.PKCS1v15(), cert.signature_hash_algorithm)


def test_the_common_regions_are_pinned_and_other_partitions_are_not() -> None:
    assert set(COMMON) <= set(REGIONS)
    assert all(certs.unpinned(region) is None for region in COMMON)
    assert not [r for r in REGIONS if r.startswith(("cn-", "us-gov-", "eusc-"))]


@pytest.mark.parametrize("region", ["cn-north-1", "us-gov-west-1", "xx-nowhere-9", ""])
def test_a_region_not_pinned_is_one_clear_error(region: str) -> None:
    with pytest.raises(ValueError) as err:
        certs.certificate_for(region)
    message = str(err.value)
    assert "\n" not in message
    assert f"region {region!r}" in message
    assert certs.SOURCE in message and "aws_identity_certs.pem" in message
    assert "--identity-trust" in message
    problem = certs.unpinned(region)
    assert problem is not None and problem in message


GOOD = """\
# a comment, then a blank line

# region: eu-west-1 | Europe (Ireland) | valid 2024-04-29..2029-04-28 | sources: spire rspamd
# any note on the certificate
-----BEGIN CERTIFICATE-----
QUJD
REVG
-----END CERTIFICATE-----
"""


def test_the_reader_takes_a_well_formed_entry() -> None:
    [(region, pinned)] = certs.parse(GOOD).items()
    assert region == "eu-west-1"
    assert pinned == certs.PinnedCertificate(
        "eu-west-1", "Europe (Ireland)", "2024-04-29", "2029-04-28", ("spire", "rspamd"),
        "-----BEGIN CERTIFICATE-----\nQUJD\nREVG\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD.replace("# region: eu-west-1 | Europe (Ireland) | valid 2024-04-29..2029-04-28 | "
                  "sources: spire rspamd\n", ""),
     "line 4: a certificate without its '# region:' line"),
    (GOOD + GOOD.splitlines(keepends=True)[2] + "-----BEGIN CERTIFICATE-----\nQUJD\n"
     "-----END CERTIFICATE-----\n", "line 9: eu-west-1 is listed twice"),
    (GOOD.replace("valid 2024-04-29..", "valid 2024-4-29.."), "line 3: expected '# region:"),
    (GOOD.replace("# any note", "# region: eu-west-2 | Europe (London) | valid "
                                "2024-04-29..2029-04-28 | sources: spire\n# any note"),
     "line 4: region line before eu-west-1's certificate"),
    (GOOD.replace("REVG", "RE VG"), "line 7: not base64 inside a certificate"),
    (GOOD.replace("# any note", "any note"), "line 4: expected a comment"),
    (GOOD.replace("-----END CERTIFICATE-----\n", ""), "ends before eu-west-1's certificate"),
    (GOOD.replace("-----BEGIN CERTIFICATE-----\nQUJD\nREVG\n-----END CERTIFICATE-----\n", ""),
     "ends before eu-west-1's certificate"),
])
def test_the_reader_refuses_what_it_cannot_vouch_for(text: str, expected: str) -> None:
    with pytest.raises(ValueError) as err:
        certs.parse(text, "data.pem")
    assert str(err.value).startswith("data.pem")
    assert expected in str(err.value)
