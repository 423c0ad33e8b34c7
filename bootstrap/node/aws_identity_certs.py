"""AWS's published "RSA" certificates for instance identity document signatures, pinned.

These verify the base64-encoded `signature` of IMDS `/latest/dynamic/instance-identity/`
(RSA PKCS#1 v1.5 over SHA-256 of the document); AWS's page lists per region a DSA
certificate (PKCS7 signature), an "RSA" one (this signature) and an RSA-2048 one (the
`rsa2048` PKCS7 signature). Source: AWS's page "AWS public certificates for instance
identity document signatures",
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/regions-certs.html, as of 2026-12-06.

Only certificates obtained verbatim together with their region are pinned. The page itself
could be read here only in excerpts (its opening lines: the us-east-1 RSA certificate's
first three lines, which match the text below); the full text of us-east-1's RSA
certificate comes from a public copy labelled with that region, and it is intact: it parses,
its self-signature verifies with its own key (tests/unit/test_identity_webhook.py), subject
O=Amazon Web Services LLC, valid 2024-04-29 to 2029-04-28, RSA 1024-bit (AWS's choice for
this signature, not ours). Another region: add its RSA certificate from that page to
`RSA_CERTIFICATES` (and a test), or give the approver `--identity-trust` a PEM file with it.
Standard library only (data): the bootstrap reads it when it writes the approver's trust file.
"""

from __future__ import annotations

SOURCE = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/regions-certs.html"
PINNED_ON = "2026-12-06"

_US_EAST_1 = """\
-----BEGIN CERTIFICATE-----
MIIDITCCAoqgAwIBAgIUE1y2NIKCU+Rg4uu4u32koG9QEYIwDQYJKoZIhvcNAQEL
BQAwXDELMAkGA1UEBhMCVVMxGTAXBgNVBAgTEFdhc2hpbmd0b24gU3RhdGUxEDAO
BgNVBAcTB1NlYXR0bGUxIDAeBgNVBAoTF0FtYXpvbiBXZWIgU2VydmljZXMgTExD
MB4XDTI0MDQyOTE3MzQwMVoXDTI5MDQyODE3MzQwMVowXDELMAkGA1UEBhMCVVMx
GTAXBgNVBAgTEFdhc2hpbmd0b24gU3RhdGUxEDAOBgNVBAcTB1NlYXR0bGUxIDAe
BgNVBAoTF0FtYXpvbiBXZWIgU2VydmljZXMgTExDMIGfMA0GCSqGSIb3DQEBAQUA
A4GNADCBiQKBgQCHvRjf/0kStpJ248khtIaN8qkDN3tkw4VjvA9nvPl2anJO+eIB
UqPfQG09kZlwpWpmyO8bGB2RWqWxCwuB/dcnIob6w420k9WY5C0IIGtDRNauN3ku
vGXkw3HEnF0EjYr0pcyWUvByWY4KswZV42X7Y7XSS13hOIcL6NLA+H94/QIDAQAB
o4HfMIHcMAsGA1UdDwQEAwIHgDAdBgNVHQ4EFgQUJdbMCBXKtvCcWdwUUizvtUF2
UTgwgZkGA1UdIwSBkTCBjoAUJdbMCBXKtvCcWdwUUizvtUF2UTihYKReMFwxCzAJ
BgNVBAYTAlVTMRkwFwYDVQQIExBXYXNoaW5ndG9uIFN0YXRlMRAwDgYDVQQHEwdT
ZWF0dGxlMSAwHgYDVQQKExdBbWF6b24gV2ViIFNlcnZpY2VzIExMQ4IUE1y2NIKC
U+Rg4uu4u32koG9QEYIwEgYDVR0TAQH/BAgwBgEB/wIBADANBgkqhkiG9w0BAQsF
AAOBgQAlxSmwcWnhT4uAeSinJuz+1BTcKhVSWb5jT8pYjQb8ZoZkXXRGb09mvYeU
NeqOBr27rvRAnaQ/9LUQf72+SahDFuS4CMI8nwowytqbmwquqFr4dxA/SDADyRiF
ea1UoMuNHTY49J/1vPomqsVn7mugTp+TbjqCfOJTpu0temHcFA==
-----END CERTIFICATE-----
"""

RSA_CERTIFICATES: dict[str, str] = {
    "us-east-1": _US_EAST_1,
}


def certificate_for(region: str) -> str:
    """The PEM RSA certificate AWS signs `region`'s instance identity documents with."""
    try:
        return RSA_CERTIFICATES[region]
    except KeyError:
        raise ValueError(
            f"no pinned AWS instance identity certificate for region {region!r} (pinned: "
            f"{', '.join(sorted(RSA_CERTIFICATES))}): add that region's \"RSA\" certificate "
            f"from {SOURCE} to bootstrap/node/aws_identity_certs.py, or give the approver "
            "--identity-trust with it") from None
