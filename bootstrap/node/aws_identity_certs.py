"""AWS's published "RSA" certificates for instance identity document signatures, pinned.

These verify the base64-encoded signature at IMDS `/latest/dynamic/instance-identity/signature`
(RSA PKCS#1 v1.5 over SHA-256 of the `document` beside it), which a joining node presents. AWS's
page lists per region a DSA certificate (the `pkcs7` signature), an "RSA" one (this
signature) and an "RSA-2048" one (the `rsa2048` PKCS7 signature); only the "RSA" ones are
pinned. Source: AWS's page "AWS public certificates for instance identity document
signatures", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/regions-certs.html, as of
2026-12-06.

The certificates are data, in `aws_identity_certs.pem` beside this module (one per region,
each after a line naming its region, its validity and its sources). The page itself could be
read here only in excerpts (its opening lines, which match us-east-1's certificate), so the
certificates come from three public copies of it that name each certificate's region: SPIRE's
generated table (2026-08-14, the newest, and the one pinned), rspamd's (2025-08-11) and
smallstep's (2024-06-11); the data file's header cites them exactly. Only certificates held
verbatim together with their region are pinned, the 34 commercial regions:

- confirmed by two or three sources, byte for byte (26): af-south-1, ap-east-1, ap-east-2,
  ap-northeast-1, ap-northeast-2, ap-northeast-3, ap-south-1, ap-southeast-1,
  ap-southeast-2, ap-southeast-5, ap-southeast-7, ca-central-1, eu-central-1, eu-north-1,
  eu-south-1, eu-west-1, eu-west-2, eu-west-3, me-central-1, me-south-1, mx-central-1,
  sa-east-1, us-east-1, us-east-2, us-west-1, us-west-2;
- one source (8): ap-southeast-6 (only SPIRE lists it), and the seven AWS re-issued in 2026
  (ap-south-2, ap-southeast-3, ap-southeast-4, ca-west-1, eu-central-2, eu-south-2,
  il-central-1), whose new certificates carry the same public key as the earlier ones rspamd
  and smallstep list: the key a signature is checked with is confirmed twice.

Not pinned: China (cn-*), GovCloud (us-gov-*) and the European Sovereign Cloud (eusc-*),
other partitions. Many regions share one key (the 2024 certificates of the older regions
differ only in serial and dates): that is AWS's choice, as is RSA 1024-bit. Every certificate
parses, is RSA, self-signed and valid on 2026-12-06 (tests/unit/test_aws_identity_certs.py);
the first expires 2029-02-02 (ap-east-1), most 2029-04-28. Another region: add its "RSA"
certificate from that page to the data file (the tests check it), or give the approver
`--identity-trust` a PEM file with it. A stack whose `aws:region` is not pinned is refused by
check-stack (components/settings.py). Standard library only: the bootstrap reads it when it
writes the approver's trust file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SOURCE = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/regions-certs.html"
PINNED_ON = "2026-12-06"
SIGNATURE_PATH = "/latest/dynamic/instance-identity/signature"
DATA_FILE = Path(__file__).with_name("aws_identity_certs.pem")

_BEGIN, _END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
_REGION_LINE = re.compile(
    r"# region: (?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+) \| (?P<name>[^|]+?) \| "
    r"valid (?P<not_before>[0-9]{4}-[0-9]{2}-[0-9]{2})\.\.(?P<not_after>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r" \| sources: (?P<sources>[a-z]+(?: [a-z]+)*)\Z", re.ASCII)
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]+={0,2}\Z", re.ASCII)


@dataclass(frozen=True)
class PinnedCertificate:
    """One region's certificate and what the data file says of it (the tests hold the dates
    and the PEM to each other)."""

    region: str
    name: str
    not_before: str
    not_after: str
    sources: tuple[str, ...]
    pem: str


def parse(text: str, origin: str = "aws_identity_certs.pem") -> dict[str, PinnedCertificate]:
    """The data file's certificates by region. Strict: every certificate follows its own
    region line, no region twice, nothing else but comments and blank lines."""
    pinned: dict[str, PinnedCertificate] = {}
    header: re.Match[str] | None = None
    body: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{origin} line {number}"
        if body is not None:
            if line == _END:
                assert header is not None  # a body only opens after its region line
                region = header["region"]
                pinned[region] = PinnedCertificate(
                    region, header["name"], header["not_before"], header["not_after"],
                    tuple(header["sources"].split()), "\n".join([_BEGIN, *body, _END, ""]))
                header, body = None, None
            elif _BASE64_LINE.fullmatch(line):
                body.append(line)
            else:
                raise ValueError(f"{where}: not base64 inside a certificate")
        elif line.startswith("# region:"):
            if header is not None:
                raise ValueError(f"{where}: region line before {header['region']}'s certificate")
            header = _REGION_LINE.fullmatch(line)
            if header is None:
                raise ValueError(f"{where}: expected '# region: <code> | <name> | valid "
                                 "<YYYY-MM-DD>..<YYYY-MM-DD> | sources: <names>'")
            if header["region"] in pinned:
                raise ValueError(f"{where}: {header['region']} is listed twice")
        elif line == _BEGIN:
            if header is None:
                raise ValueError(f"{where}: a certificate without its '# region:' line")
            body = []
        elif line and not line.startswith("#"):
            raise ValueError(f"{where}: expected a comment, a '# region:' line or a certificate")
    if header is not None:  # also set while a body is open
        raise ValueError(f"{origin}: ends before {header['region']}'s certificate is complete")
    return pinned


PINNED: dict[str, PinnedCertificate] = parse(DATA_FILE.read_text(encoding="ascii"))
RSA_CERTIFICATES: dict[str, str] = {region: p.pem for region, p in PINNED.items()}


def unpinned(region: str) -> str | None:
    """None when `region` has a pinned certificate, else why not and the fix, one line."""
    if region in RSA_CERTIFICATES:
        return None
    return (f"no pinned AWS instance identity certificate for region {region!r} "
            f"({len(RSA_CERTIFICATES)} commercial regions are pinned, in "
            f"bootstrap/node/{DATA_FILE.name}); add that region's \"RSA\" certificate from "
            f"{SOURCE} to that file")


def certificate_for(region: str) -> str:
    """The PEM RSA certificate AWS signs `region`'s instance identity documents with."""
    problem = unpinned(region)
    if problem is not None:
        raise ValueError(f"{problem}, or give the approver --identity-trust with it")
    return RSA_CERTIFICATES[region]
