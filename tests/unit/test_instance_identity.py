"""The identity sources (the lab's record, EC2's reply, IMDS credentials, SigV4), the
identity token, and signature verification against trusted keys (AWS's pinned certificates:
tests/unit/test_aws_identity_certs.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from cryptography import x509
from csr_support import Cloud, serve  # noqa: F401 - a fixture

from bootstrap.node import aws_identity_certs
from bootstrap.node import instance_identity as identity
from bootstrap.node.instance_identity import (
    LAB_ACCOUNT,
    Credentials,
    Ec2Identity,
    Instance,
    LabIdentity,
    LookupFailed,
)


def write_record(path: Path, instances: list[dict[str, Any]], mtime_ns: int) -> None:
    path.write_text(json.dumps({"instances": instances}))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_lab_record_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "lab-instances.json"
    lab = LabIdentity(str(path))
    assert lab.lookup("node-7") is None  # no file yet: no instances
    node7 = {"instance_id": "i-00000000000000007", "name": "node-7", "pool": "lab-a",
             "zone": "lab-a", "state": "running", "addresses": ["10.213.1.30"],
             "dns_names": ["node-7"], "account": LAB_ACCOUNT}
    write_record(path, [node7], 1_000_000_000)
    expected = Instance("node-7", "lab-a", "running", ("10.213.1.30",), ("node-7",),
                        "i-00000000000000007", LAB_ACCOUNT)
    assert lab.lookup("node-7") == lab.by_id("i-00000000000000007") == expected
    assert lab.by_id("i-00000000000000008") is None and lab.region == "lab"
    write_record(path, [{**node7, "state": "stopped"}], 2_000_000_000)
    assert lab.by_id("i-00000000000000007").state == "stopped"  # type: ignore[union-attr]
    path.write_text("{not json")
    os.utime(path, ns=(3_000_000_000,) * 2)
    with pytest.raises(LookupFailed, match="unreadable"):
        lab.lookup("node-7")
    path.unlink()
    assert lab.lookup("node-7") is None



def test_ec2_instance_collects_every_private_address() -> None:
    """EC2's documented reply shape, with what moto leaves out: IPv6 and secondary IPs."""
    item = ET.fromstring(  # noqa: S314 - our own literal
        '<item xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        "<instanceState><code>16</code><name>running</name></instanceState>"
        "<privateDnsName>ip-10-0-1-5.ec2.internal</privateDnsName>"
        "<privateIpAddress>10.0.1.5</privateIpAddress>"
        "<networkInterfaceSet><item><privateIpAddressesSet>"
        "<item><privateIpAddress>10.0.1.5</privateIpAddress></item>"
        "<item><privateIpAddress>10.0.1.6</privateIpAddress></item></privateIpAddressesSet>"
        "<ipv6AddressesSet><item><ipv6Address>2600:1f18::5</ipv6Address></item>"
        "</ipv6AddressesSet></item></networkInterfaceSet>"
        "<instanceId>i-0123456789abcdef0</instanceId>"
        "<tagSet><item><key>mzk:pool</key><value>pool-a</value></item>"
        "<item><key>Name</key><value>pool-a-node</value></item></tagSet></item>")
    assert identity._ec2_instance(item, "123456789012") == Instance(
        "ip-10-0-1-5.ec2.internal", "pool-a", "running",
        ("10.0.1.5", "10.0.1.6", "2600:1f18::5"), ("ip-10-0-1-5.ec2.internal",),
        "i-0123456789abcdef0", "123456789012")  # the Name tag is no name of the instance



class Imds(BaseHTTPRequestHandler):
    """IMDSv2: a token by PUT, then the role and its credentials only with that token."""

    calls: list[str] = []
    expiration = "2030-01-01T00:00:00Z"

    def do_PUT(self) -> None:  # noqa: N802
        self.calls.append("token")
        self._reply(b"tok" if self.headers["X-aws-ec2-metadata-token-ttl-seconds"] else b"")

    def do_GET(self) -> None:  # noqa: N802
        if self.headers["X-aws-ec2-metadata-token"] != "tok":
            return self._reply(b"", 401)
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            return self._reply(b"node-role\n")
        self.calls.append(self.path)
        self._reply(json.dumps({"AccessKeyId": "AKIMDS", "SecretAccessKey": "s", "Token": "t",
                                "Expiration": self.expiration}).encode())

    def _reply(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass



def test_credentials_from_imds_are_cached_until_near_expiry(
        serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    server = serve(Imds)
    monkeypatch.setenv("MZK_IMDS_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    Imds.calls = []
    expiry = dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
    clock = [expiry - 3600]
    ec2 = Ec2Identity("eu-west-1", "c1", clock=lambda: clock[0])
    assert ec2.credentials() == Credentials("AKIMDS", "s", "t", expiry)
    ec2.credentials()
    assert Imds.calls == ["token", "/latest/meta-data/iam/security-credentials/node-role"]
    clock[0] = expiry - 200  # within 5 minutes of expiry: fetched again
    ec2.credentials()
    assert len(Imds.calls) == 4


def test_no_credentials_anywhere_is_a_lookup_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MZK_IMDS_ENDPOINT", "http://127.0.0.1:9")  # discard: refused
    with pytest.raises(LookupFailed):
        Ec2Identity("eu-west-1", "c1").credentials()


# ---- SigV4 ---------------------------------------------------------------------------------------

def test_sigv4_reproduces_awss_documented_example() -> None:
    """The IAM ListUsers example of AWS's "Create a signed AWS API request" page."""
    url = "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08"
    headers = identity.sign_v4(
        "GET", url, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, b"",
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"), "us-east-1",
        "iam", dt.datetime(2015, 8, 30, 12, 36, tzinfo=dt.UTC))
    canonical, signed = identity.canonical_request(
        "GET", url, {k: v for k, v in headers.items() if k != "Authorization"}, b"")
    assert canonical == "\n".join([
        "GET", "/", "Action=ListUsers&Version=2010-05-08",
        "content-type:application/x-www-form-urlencoded; charset=utf-8",
        "host:iam.amazonaws.com", "x-amz-date:20150830T123600Z", "",
        "content-type;host;x-amz-date",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"])
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7")


def test_sigv4_matches_botocore_for_a_describe_instances_post() -> None:
    url, body = "http://127.0.0.1:5000/", b"Action=DescribeInstances&Filter.1.Name=tag%3AName"
    content_type = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
    reference = AWSRequest(method="POST", url=url, data=body, headers=dict(content_type))
    SigV4Auth(BotoCredentials("AK", "SK", "TOKEN"), "ec2", "eu-west-1").add_auth(reference)
    when = dt.datetime.strptime(reference.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    ours = identity.sign_v4("POST", url, content_type, body, Credentials("AK", "SK", "TOKEN"),
                            "eu-west-1", "ec2", when.replace(tzinfo=dt.UTC))
    assert ours["Authorization"] == reference.headers["Authorization"]
    assert ours["x-amz-security-token"] == "TOKEN" and ours["host"] == "127.0.0.1:5000"




# ---- the identity token ---------------------------------------------------------------------

def test_an_identity_token_round_trips_in_one_spelling() -> None:
    document, signature = b'{"instanceId": "i-0"}\n', bytes(range(256))
    token = identity.identity_token(document, signature)
    assert token.startswith("mzk-iid.") and "=" not in token and "+" not in token
    assert identity.parse_identity_token(token) == (document, signature)
    # As the user data makes it in shell: base64 -w0 | tr '+/' '-_' | tr -d '='
    import base64
    shell = "mzk-iid." + ".".join(base64.b64encode(part).decode().translate(
        str.maketrans("+/", "-_")).replace("=", "") for part in (document, signature))
    assert shell == token


@pytest.mark.parametrize("token", [
    "", "mzk-iid.", "mzk-iid.abc", "mzk-iid.a.b.c", "mzk-iid.YWJj.", "mzk-iid.YW=J.YWJj",
    "mzk-iid.YWJj.YWJj+", "mzk-iid.YWI.YWJk" + "x" * 20000, "abcdef.0123456789abcdef",
    "mzk-iid.YWJjZA.YWJjZB",  # decodes, but not in its one spelling (stray low bits)
])
def test_anything_else_is_not_an_identity_token(token: str) -> None:
    with pytest.raises(ValueError):
        identity.parse_identity_token(token)


# ---- signatures and trust ---------------------------------------------------------------------

def test_a_signature_verifies_with_the_cloud_key_and_no_other() -> None:
    cloud, other = Cloud(), Cloud()
    keys = identity.load_trust(cloud.public_pem())
    document = cloud.document()
    signature = cloud.sign(document)
    assert identity.signature_verifies(document, signature, keys)
    assert not identity.signature_verifies(document + b" ", signature, keys)  # altered
    assert not identity.signature_verifies(document, other.sign(document), keys)  # forged
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not identity.signature_verifies(document, flipped, keys)
    assert not identity.signature_verifies(document, signature[1:], keys)  # short
    assert identity.signature_verifies(document, signature, keys + identity.load_trust(
        other.public_pem()))  # any trusted key


def test_a_signature_with_malformed_padding_is_refused() -> None:
    """Built by hand with the private key: every byte of the encoding counts."""
    cloud = Cloud()
    (key,) = identity.load_trust(cloud.public_pem())
    d = cloud.key.private_numbers().d
    document = b"{}"
    digest_info = identity.SHA256_DIGEST_INFO + __import__("hashlib").sha256(document).digest()
    size = 256

    def signed(encoded: bytes) -> bytes:
        return pow(int.from_bytes(encoded, "big"), d, key.modulus).to_bytes(size, "big")

    good = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
    assert identity.rsa_sha256_verifies(key, document, signed(good))
    bad = [good[:2] + b"\xfe" + good[3:],  # a padding byte not 0xff
           b"\x00\x02" + good[2:],  # block type 2
           good[:-len(digest_info) - 1] + b"\x01" + digest_info,  # no zero separator
           b"\x00\x01" + b"\xff" * 8 + b"\x00" + b"\x00" * (size - 11 - len(digest_info))
           + digest_info]  # garbage between padding and DigestInfo
    for encoded in bad:
        assert len(encoded) == size
        assert not identity.rsa_sha256_verifies(key, document, signed(encoded))


def test_trust_files_hold_certificates_or_public_keys_of_rsa_only(tmp_path: Path) -> None:
    cloud = Cloud()
    cert = x509.load_pem_x509_certificate(aws_identity_certs.certificate_for("us-east-1").encode())
    both = cloud.public_pem() + aws_identity_certs.certificate_for("us-east-1").encode()
    keys = identity.load_trust(both)
    assert [k.bits for k in keys] == [2048, 1024]
    assert keys[1].modulus == cert.public_key().public_numbers().n  # type: ignore[union-attr]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    private = cloud.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    for bad, why in ((b"", "no CERTIFICATE or PUBLIC KEY"), (ec_pem, "identity signatures are RSA"),
                     (private, "a PRIVATE KEY block"),
                     (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                      "does not parse")):
        path = tmp_path / "trust.pem"
        path.write_bytes(bad)
        with pytest.raises(ValueError, match=why) as err:
            identity.load_trust_file(str(path))
        assert str(err.value).startswith(f"--identity-trust {path}: ")

