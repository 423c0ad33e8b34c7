"""The kubelet CSR approver: its DER reader against real requests, every approval rule both
ways, the identity sources (a lab file, EC2 through a moto server), SigV4, and one real
`--once` pass against a TLS fake API server that demands a client certificate."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import kubernetes_validate
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bootstrap.node import csr_approver as approver
from bootstrap.node import instance_identity as identity
from bootstrap.node.csr_approver import SIGNER_CLIENT, SIGNER_SERVING, decide
from bootstrap.node.instance_identity import (
    Credentials,
    Ec2Identity,
    Instance,
    LabIdentity,
    LookupFailed,
)
from bootstrap.steps import node_join

SCRIPT = Path(approver.__file__)
KEY = ec.generate_private_key(ec.SECP256R1())
BOOTSTRAPPER = "system:bootstrap:abc123"
BOOTSTRAP_GROUPS = ["system:bootstrappers", "system:bootstrappers:mzk:lab-a",
                    "system:authenticated"]
NODE_GROUPS = ["system:nodes", "system:authenticated"]
CLIENT = ["digital signature", "client auth"]
SERVING = ["digital signature", "key encipherment", "server auth"]


def pem_csr(cn: str = "system:node:node-7", orgs: tuple[str, ...] = ("system:nodes",),
            dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), emails: tuple[str, ...] = (),
            uris: tuple[str, ...] = ()) -> bytes:
    name = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    name += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(name))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.RFC822Name(e) for e in emails] + [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_csr(signer: str = SIGNER_CLIENT, user: str = BOOTSTRAPPER,
             groups: list[str] | None = None, usages: list[str] | None = None,
             name: str = "csr-1", conditions: tuple[dict[str, str], ...] = (),
             pem: bytes | None = None, **subject: Any) -> dict[str, Any]:
    """A CSR object as the API lists it; defaults: an honest bootstrap for node-7 in lab-a."""
    return {"metadata": {"name": name, "resourceVersion": "41"},
            "spec": {"request": base64.b64encode(pem or pem_csr(**subject)).decode(),
                     "signerName": signer, "username": user,
                     "groups": BOOTSTRAP_GROUPS if groups is None else groups,
                     "usages": CLIENT if usages is None else usages},
            "status": {"conditions": list(conditions)} if conditions else {}}


def serving_csr(**kw: Any) -> dict[str, Any]:
    defaults = {"signer": SIGNER_SERVING, "user": "system:node:node-7", "groups": NODE_GROUPS,
                "usages": SERVING, "dns": ("node-7",), "ips": ("10.213.1.30",)}
    return make_csr(**{**defaults, **kw})


class Record:
    """An identity source held in memory."""

    def __init__(self, *instances: Instance) -> None:
        self.instances = {i.name: i for i in instances}

    def lookup(self, name: str) -> Instance | None:
        return self.instances.get(name)


RECORD = Record(
    Instance("node-7", "lab-a", "running", ("10.213.1.30", "fd00:213::30"),
             ("ip-10-213-1-30.lab.internal",)),
    Instance("node-8", "lab-a", "running", ("10.213.1.31",)),  # registered as a Node
    Instance("node-9", "lab-b", "running", ("10.213.2.30",)),
    Instance("node-10", "lab-a", "stopped", ("10.213.1.32",)),
)


def registered(name: str) -> bool:
    return name == "node-8"


# ---- the DER reader --------------------------------------------------------------------------

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
    got = approver.parse_csr(built.public_bytes(serialization.Encoding.DER))
    assert got.common_names == ["system:node:n"]
    assert got.organizations == ["a", "b", "c"]
    assert got.dns_names == ["n.example"]
    assert got.ip_addresses == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1")]
    assert got.other_sans == ["email", "URI"]
    assert got.key_algorithm == "1.2.840.10045.2.1"  # id-ecPublicKey


def test_parser_reads_a_request_without_extensions() -> None:
    der = approver.request_der(make_csr())
    got = approver.parse_csr(der)
    assert (got.common_names, got.dns_names, got.ip_addresses) == (["system:node:node-7"], [], [])


@pytest.mark.parametrize("mangle", [lambda d: d[:-10], lambda d: d + b"\x00",
                                    lambda d: b"\x30\x03\x02\x01\x00", lambda d: b""])
def test_malformed_requests_are_denied(mangle: Any) -> None:
    der = approver.request_der(make_csr())
    with pytest.raises(ValueError):
        approver.parse_csr(mangle(der))
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(mangle(der)) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    decision, reason = decide(make_csr(pem=pem), RECORD, registered)
    assert decision == "deny" and "malformed" in reason


def test_request_that_is_not_pem_is_denied() -> None:
    csr = make_csr()
    csr["spec"]["request"] = base64.b64encode(b"hello").decode()
    assert decide(csr, RECORD, registered) == ("deny",
                                               "malformed certificate request: "
                                               "no PEM CERTIFICATE REQUEST block")


# ---- the rules ---------------------------------------------------------------------------------

DENIALS = {
    # common
    "cn-not-a-node": (make_csr, {"cn": "node-7"}, "CN must be one system:node:<name>"),
    "name-not-dns-1123": (make_csr, {"cn": "system:node:Node_7"}, "not a DNS-1123 subdomain"),
    "o-masters": (make_csr, {"orgs": ("system:masters",)}, "O must be exactly"),
    "o-extra": (make_csr, {"orgs": ("system:nodes", "system:masters")}, "O must be exactly"),
    "o-missing": (make_csr, {"orgs": ()}, "O must be exactly"),
    "email-san": (serving_csr, {"emails": ("a@b.c",)}, "SANs of kind email"),
    "uri-san": (make_csr, {"uris": ("spiffe://x",)}, "SANs of kind URI"),
    # client
    "client-dns-san": (make_csr, {"dns": ("node-7",)}, "must carry no SANs"),
    "client-server-usage": (make_csr, {"usages": ["digital signature", "client auth",
                                                  "server auth"]}, "usages"),
    "client-no-client-auth": (make_csr, {"usages": ["digital signature"]}, "usages"),
    "impostor-unknown-name": (make_csr, {"cn": "system:node:node-99"},
                              "no instance named node-99"),
    "impostor-registered": (make_csr, {"cn": "system:node:node-8"},
                            "a node named node-8 is already registered"),
    "impostor-other-pool": (make_csr, {"cn": "system:node:node-9"},
                            "instance node-9 is in pool 'lab-b', the token is for pool 'lab-a'"),
    "instance-stopped": (make_csr, {"cn": "system:node:node-10"}, "node-10 is stopped"),
    "token-without-pool": (make_csr, {"groups": ["system:bootstrappers"]}, "exactly one group"),
    "token-two-pools": (make_csr, {"groups": BOOTSTRAP_GROUPS + ["system:bootstrappers:mzk:lab-b"]},
                        "exactly one group"),
    "some-user": (make_csr, {"user": "alice", "groups": ["system:masters"]},
                  "neither node node-7 nor a bootstrap token"),
    "other-node-asks": (make_csr, {"user": "system:node:node-8", "groups": NODE_GROUPS},
                        "neither node node-7"),
    "renewal-not-in-nodes": (make_csr, {"user": "system:node:node-7", "groups": []},
                             "not in group system:nodes"),
    "renewal-stopped": (make_csr, {"cn": "system:node:node-10", "user": "system:node:node-10",
                                   "groups": NODE_GROUPS}, "node-10 is stopped"),
    "renewal-gone": (make_csr, {"cn": "system:node:node-99", "user": "system:node:node-99",
                                "groups": NODE_GROUPS}, "no instance named node-99"),
    # serving
    "serving-by-token": (serving_csr, {"user": BOOTSTRAPPER, "groups": BOOTSTRAP_GROUPS},
                         "is not node node-7"),
    "serving-by-other-node": (serving_csr, {"user": "system:node:node-8"}, "is not node node-7"),
    "serving-not-in-nodes": (serving_csr, {"groups": ["system:authenticated"]},
                             "in group system:nodes"),
    "serving-client-usage": (serving_csr, {"usages": ["server auth", "client auth"]}, "usages"),
    "serving-no-server-auth": (serving_csr, {"usages": ["digital signature"]}, "usages"),
    "serving-no-san": (serving_csr, {"dns": (), "ips": ()}, "at least one DNS or IP SAN"),
    "serving-foreign-ip": (serving_csr, {"ips": ("10.213.1.30", "10.213.1.31")},
                           "SANs ['10.213.1.31'] do not belong to instance node-7"),
    "serving-foreign-dns": (serving_csr, {"dns": ("node-7", "api.lab.internal")},
                            "SANs ['api.lab.internal'] do not belong"),
    "serving-unknown-node": (serving_csr, {"cn": "system:node:node-99",
                                           "user": "system:node:node-99"},
                             "no instance named node-99"),
}


@pytest.mark.parametrize("build,changes,reason", DENIALS.values(), ids=DENIALS.keys())
def test_a_request_that_breaks_a_rule_is_denied_saying_which(build: Any, changes: dict[str, Any],
                                                             reason: str) -> None:
    decision, why = decide(build(**changes), RECORD, registered)
    assert (decision, reason in why) == ("deny", True), why


APPROVALS = {
    "bootstrap": (make_csr, {}, "instance node-7 runs in pool lab-a"),
    "bootstrap-usages-minimal": (make_csr, {"usages": ["client auth"]}, "runs in pool lab-a"),
    "renewal": (make_csr, {"user": "system:node:node-7", "groups": NODE_GROUPS},
                "renews its own client certificate"),
    "renewal-of-registered-node": (make_csr, {"cn": "system:node:node-8",
                                              "user": "system:node:node-8",
                                              "groups": NODE_GROUPS}, "renews"),
    "serving": (serving_csr, {}, "owning every SAN"),
    "serving-private-dns-and-ipv6": (serving_csr, {"dns": ("ip-10-213-1-30.lab.internal",),
                                                   "ips": ("fd00:213::30", "10.213.1.30")},
                                     "owning every SAN"),
    "serving-only-ip": (serving_csr, {"dns": ()}, "owning every SAN"),
}


@pytest.mark.parametrize("build,changes,reason", APPROVALS.values(), ids=APPROVALS.keys())
def test_an_honest_request_is_approved(build: Any, changes: dict[str, Any], reason: str) -> None:
    decision, why = decide(build(**changes), RECORD, registered)
    assert (decision, reason in why) == ("approve", True), why


def test_a_renewal_needs_no_node_lookup() -> None:
    def no_lookup(name: str) -> bool:
        raise AssertionError("a renewal asked whether the node exists")

    csr = make_csr(user="system:node:node-7", groups=NODE_GROUPS)
    assert decide(csr, RECORD, no_lookup)[0] == "approve"


@pytest.mark.parametrize("csr", [
    make_csr(signer="kubernetes.io/kube-apiserver-client"),
    make_csr(signer="example.com/other", cn="anything", orgs=()),
    make_csr(conditions=({"type": "Approved", "status": "True"},)),
    serving_csr(conditions=({"type": "Denied", "status": "True"},)),
    make_csr(cn="system:node:node-99", conditions=({"type": "Failed", "status": "True"},)),
], ids=["other-signer", "foreign-signer", "approved", "denied", "failed"])
def test_other_signers_and_decided_requests_are_left_alone(csr: dict[str, Any]) -> None:
    assert decide(csr, RECORD, registered)[0] == "skip"
    assert not approver.is_ours(csr)


def test_a_lookup_that_fails_is_retried_never_denied() -> None:
    class Down:
        def lookup(self, name: str) -> Instance | None:
            raise LookupFailed("EC2 unreachable")

    def api_down(name: str) -> bool:
        raise LookupFailed("HTTP 503")

    assert decide(make_csr(), Down(), registered) == (
        "skip", "identity not checked yet: EC2 unreachable")
    assert decide(make_csr(), RECORD, api_down)[0] == "skip"


# ---- identity sources --------------------------------------------------------------------------

def write_record(path: Path, instances: list[dict[str, Any]], mtime_ns: int) -> None:
    path.write_text(json.dumps({"instances": instances}))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_lab_record_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "lab-instances.json"
    lab = LabIdentity(str(path))
    assert lab.lookup("node-7") is None  # no file yet: no instances
    node7 = {"name": "node-7", "pool": "lab-a", "state": "running",
             "addresses": ["10.213.1.30"], "dns_names": []}
    write_record(path, [node7], 1_000_000_000)
    assert lab.lookup("node-7") == Instance("node-7", "lab-a", "running", ("10.213.1.30",))
    write_record(path, [{**node7, "state": "stopped"}], 2_000_000_000)
    assert lab.lookup("node-7").state == "stopped"  # type: ignore[union-attr]
    path.write_text("{not json")
    os.utime(path, ns=(3_000_000_000,) * 2)
    with pytest.raises(LookupFailed, match="unreadable"):
        lab.lookup("node-7")
    path.unlink()
    assert lab.lookup("node-7") is None


@pytest.fixture(scope="module")
def moto_ec2() -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    """A moto server with instances of cluster c1 (and one of c2); yields its URL and them."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}/"
    with pytest.MonkeyPatch.context() as env:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.setenv(key, "testing")
        env.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # seconds saved; AMIs not validated
        ec2 = boto3.client("ec2", endpoint_url=url, region_name="eu-west-1")
        image = "ami-12345678"

        def run(name: str, cluster: str = "c1", role: str = "node") -> dict[str, Any]:
            tags = {"Name": name, "mzk:cluster": cluster, "mzk:role": role, "mzk:pool": "lab-a"}
            return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[
                {"ResourceType": "instance",
                 "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["Instances"][0]

        made = {n: run(n) for n in ("node-7", "node-8", "node-9")}
        made["node-10"] = run("node-10", cluster="c2")
        made["cp-1"] = run("cp-1", role="control-plane")
        ec2.stop_instances(InstanceIds=[made["node-8"]["InstanceId"]])
        ec2.terminate_instances(InstanceIds=[made["node-9"]["InstanceId"]])
    yield url, made
    reset = http.client.HTTPConnection(host, port, timeout=10)  # moto's state is global
    reset.request("POST", "/moto-api/reset")
    reset.getresponse().read()
    reset.close()
    server.stop()


def test_ec2_source_finds_this_clusters_nodes(moto_ec2: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url, made = moto_ec2
    monkeypatch.setenv("MZK_EC2_ENDPOINT", url)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session")  # sent as x-amz-security-token
    ec2 = Ec2Identity("eu-west-1", "c1")
    dns = {name: made[name]["PrivateDnsName"] for name in made}
    node7 = ec2.lookup(dns["node-7"])
    assert node7 is not None and node7.state == "running" and node7.pool == "lab-a"
    assert made["node-7"]["PrivateIpAddress"] in node7.addresses
    assert node7.dns_names == (dns["node-7"],)
    assert ec2.lookup("node-7") is None  # a Name tag is anyone's to set: no identity
    assert ec2.lookup(dns["node-8"]).state == "stopped"  # type: ignore[union-attr]
    assert ec2.lookup(dns["node-9"]).state == "terminated"  # type: ignore[union-attr]
    assert ec2.lookup(dns["node-10"]) is None  # another cluster's
    assert ec2.lookup(dns["cp-1"]) is None  # not a node
    assert Ec2Identity("eu-west-1", "c2").lookup(dns["node-10"]) is not None
    assert decide(make_csr(cn=f"system:node:{dns['node-7']}"), ec2,
                  lambda name: False)[0] == "approve"
    assert decide(make_csr(cn=f"system:node:{dns['node-8']}"), ec2, lambda name: False) == (
        "deny", f"instance {dns['node-8']} is stopped, not running")


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
        "<tagSet><item><key>mzk:pool</key><value>pool-a</value></item></tagSet></item>")
    assert identity._ec2_instance(item) == Instance(
        "ip-10-0-1-5.ec2.internal", "pool-a", "running",
        ("10.0.1.5", "10.0.1.6", "2600:1f18::5"), ("ip-10-0-1-5.ec2.internal",))


def test_ec2_errors_are_lookup_failures(moto_ec2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MZK_EC2_ENDPOINT", moto_ec2[0] + "no-such-path")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(LookupFailed):
        Ec2Identity("eu-west-1", "c1").lookup("node-7")


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


@pytest.fixture()
def serve() -> Iterator[Any]:
    """Start HTTP servers on loopback for one test; shut every one down after it."""
    servers: list[ThreadingHTTPServer] = []
    threads: list[threading.Thread] = []

    def start(handler: type[BaseHTTPRequestHandler],
              context: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if context:
            server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append(server)
        threads.append(thread)
        return server

    yield start
    for server, thread in zip(servers, threads, strict=True):
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_credentials_from_imds_are_cached_until_near_expiry(
        serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
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


# ---- RBAC ----------------------------------------------------------------------------------------

def test_rbac_grants_exactly_what_the_approver_uses() -> None:
    role, binding = approver.rbac_manifests("mzk:csr-approver")
    for manifest in (role, binding):
        kubernetes_validate.validate(manifest, "1.33", strict=True)
        assert manifest["metadata"]["name"] == "mzk:csr-approver"
    grants = {(r["apiGroups"][0], r["resources"][0], tuple(r.get("resourceNames", ())),
               tuple(r["verbs"])) for r in role["rules"]}
    assert grants == {
        ("certificates.k8s.io", "certificatesigningrequests", (), ("get", "list", "watch")),
        ("certificates.k8s.io", "certificatesigningrequests/approval", (), ("update",)),
        ("certificates.k8s.io", "signers", approver.SIGNERS, ("approve",)),
        ("", "nodes", (), ("get", "list", "patch")),
        ("coordination.k8s.io", "leases", (), ("get",))}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "mzk:csr-approver"}]


# ---- one real pass against a TLS fake API server ------------------------------------------

def issue(name: str, ca: tuple[Any, x509.Certificate] | None, path: Path,
          ip: str | None = None) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
               .issuer_name(ca[1].subject if ca else subject)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip))]), False)
    cert = builder.sign(ca[0] if ca else key, hashes.SHA256())
    (path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return key, cert


class FakeApi(BaseHTTPRequestHandler):
    """Lists `csrs`, knows node-8 only, records every approval PUT; `list_status` and
    `conflicts` (how many PUTs to refuse with 409) make it misbehave."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the approver expects
    csrs: list[dict[str, Any]] = []
    puts: list[tuple[str, dict[str, Any]]] = []
    clients: list[tuple[Any, str]] = []
    list_status = 200
    conflicts = 0
    nodes: list[dict[str, Any]] = []
    leases: dict[str, str] = {}
    patches: list[tuple[str, str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802
        subject = dict(x[0] for x in self.connection.getpeercert()["subject"])  # type: ignore
        self.clients.append((self.client_address, subject["commonName"]))
        if self.path == approver.CSR_PATH:
            return self._reply(self.list_status, {"kind": "CertificateSigningRequestList",
                                                  "items": self.csrs})
        if self.path == "/api/v1/nodes":
            return self._reply(200, {"kind": "NodeList", "items": self.nodes})
        lease = self.path.rsplit("/", 1)[1]
        if "/leases/" in self.path and lease in self.leases:
            return self._reply(200, {"kind": "Lease",
                                     "spec": {"renewTime": self.leases[lease]}})
        self._reply(200 if self.path == "/api/v1/nodes/node-8" else 404, {"kind": "Status"})

    def do_PATCH(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.patches.append((self.path, self.headers["Content-Type"], body))
        self._reply(200, {"kind": "Node"})

    def do_PUT(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.clients.append((self.client_address, ""))
        if FakeApi.conflicts:
            FakeApi.conflicts -= 1
            return self._reply(409, {"kind": "Status", "reason": "Conflict"})
        self.puts.append((self.path, body))
        self._reply(200, body)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def api(tmp_path: Path, serve: Any) -> Iterator[list[str]]:
    """A fake API server demanding a client certificate of our CA; yields the approver's
    flags. The lab record lists node-7 and node-8 running in lab-a."""
    ca = issue("ca", None, tmp_path)
    issue("apiserver", ca, tmp_path, ip="127.0.0.1")
    issue("csr-approver", ca, tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "apiserver.crt", tmp_path / "apiserver.key")
    context.load_verify_locations(tmp_path / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    FakeApi.csrs = [
        make_csr(name="csr-honest"),
        make_csr(name="csr-impostor", cn="system:node:node-8"),
        make_csr(name="csr-other-signer", signer="kubernetes.io/kube-apiserver-client",
                 cn="someone", orgs=()),
        serving_csr(name="csr-done", conditions=({"type": "Approved", "status": "True"},)),
    ]
    FakeApi.puts, FakeApi.clients, FakeApi.list_status, FakeApi.conflicts = [], [], 200, 0
    FakeApi.nodes, FakeApi.leases, FakeApi.patches = [], {}, []
    server = serve(FakeApi, context)
    record = {"instances": [{"name": n, "pool": "lab-a", "state": "running", "addresses": [a]}
                            for n, a in (("node-7", "10.213.1.30"), ("node-8", "10.213.1.31"))]}
    (tmp_path / "lab.json").write_text(json.dumps(record))
    yield ["--server", f"https://127.0.0.1:{server.server_address[1]}",
           "--ca", str(tmp_path / "ca.crt"), "--cert", str(tmp_path / "csr-approver.crt"),
           "--key", str(tmp_path / "csr-approver.key"),
           "--identity", f"lab:{tmp_path / 'lab.json'}", "--status", str(tmp_path / "status.json"),
           "--once"]


def test_one_pass_approves_the_honest_denies_the_impostor_and_leaves_the_rest(
        api: list[str], tmp_path: Path) -> None:
    # As the csr-approver step ships it (the program and its identity sources side by
    # side), run with no site-packages at all, as on a host with only python3.
    shipped = tmp_path / "bin"
    shipped.mkdir()
    for path, content in node_join.program_files().items():
        (shipped / Path(path).name).write_bytes(content)
    done = subprocess.run([sys.executable, "-S", "-E", "-s",
                           str(shipped / Path(node_join.PROGRAM).name), *api],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    puts = dict(FakeApi.puts)
    base = approver.CSR_PATH
    assert set(puts) == {f"{base}/csr-honest/approval", f"{base}/csr-impostor/approval"}
    honest, impostor = puts[f"{base}/csr-honest/approval"], puts[f"{base}/csr-impostor/approval"]
    assert honest["metadata"]["resourceVersion"] == "41"
    assert honest["kind"] == "CertificateSigningRequest"
    (approved,) = honest["status"]["conditions"]
    assert approved["lastUpdateTime"].endswith("Z")
    assert {k: approved[k] for k in ("type", "status", "reason")} == {
        "type": "Approved", "status": "True", "reason": "MzkIdentityVerified"}
    (denied,) = impostor["status"]["conditions"]
    assert (denied["type"], denied["reason"], denied["message"]) == (
        "Denied", "MzkIdentityNotVerified", "a node named node-8 is already registered")
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        "csr=csr-honest decision=approved node=node-7 signer=kubernetes.io/kube-apiserver-client")
    assert lines[1].endswith('reason="a node named node-8 is already registered"')
    assert len(lines) == 2
    assert {cn for _, cn in FakeApi.clients if cn} == {"csr-approver"}
    assert len({address for address, _ in FakeApi.clients}) == 1  # one kept-alive connection
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["counts"]["approved"] == 1 and status["counts"]["denied"] == 1
    assert [d["csr"] for d in status["last_decisions"]] == ["csr-honest", "csr-impostor"]


def test_a_conflict_is_retried_on_the_next_pass(api: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    FakeApi.csrs = FakeApi.csrs[:1]
    FakeApi.conflicts = 1  # another approver wrote first, say
    assert approver.main(api) == 0
    first = capsys.readouterr()
    assert FakeApi.puts == [] and first.out == "" and first.err == ""  # not an error either
    assert json.loads(Path(api[api.index("--status") + 1]).read_text())["counts"]["conflicts"] == 1
    assert approver.main(api) == 0
    assert [path.split("/")[-2] for path, _ in FakeApi.puts] == ["csr-honest"]
    assert "decision=approved" in capsys.readouterr().out


def test_api_errors_are_reported_not_raised(api: list[str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    FakeApi.list_status = 500
    assert approver.main(api) == 1
    err = capsys.readouterr().err
    assert "pass failed" in err and "HTTP 500" in err and len(err.splitlines()) == 1
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["counts"]["errors"] == 1 and "HTTP 500" in status["last_error"]
    unreachable = [*api]
    unreachable[1] = "https://127.0.0.1:9"
    assert approver.main(unreachable) == 1
    assert "pass failed" in capsys.readouterr().err


def test_bad_flags_exit_2_with_one_line(api: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    bad = [*api]
    bad[bad.index("--identity") + 1] = "gce:somewhere"
    assert approver.main(bad) == 2
    assert capsys.readouterr().err.strip() == (
        "mzk-csr-approver: --identity 'gce:somewhere' must be lab:PATH or ec2:REGION:CLUSTER")


# --------------------------------------------------------------------------- joined nodes


def joined_node(name: str, address: str, ready: str = "True",
                taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": "41"},
            "spec": {"taints": taints if taints is not None else [
                {"key": approver.CHECKS_TAINT, "effect": "NoSchedule"},
                {"key": "example.com/keep", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": ready}],
                       "addresses": [{"type": "InternalIP", "address": address}]}}


def test_node_problems_from_the_control_plane_view() -> None:
    instance = Instance("auto-a1", "pool-a", "running", ("10.213.1.100",))
    now = 1_000_000.0
    assert approver.node_problems(joined_node("auto-a1", "10.213.1.100"), instance,
                                  now - 5, now) == ""
    assert "not Ready" in approver.node_problems(
        joined_node("auto-a1", "10.213.1.100", ready="False"), instance, now - 5, now)
    assert "is not the instance's" in approver.node_problems(
        joined_node("auto-a1", "10.213.2.7"), instance, now - 5, now)
    assert "clock off" in approver.node_problems(
        joined_node("auto-a1", "10.213.1.100"), instance, now + 30, now)  # node ahead
    assert "clock off" in approver.node_problems(
        joined_node("auto-a1", "10.213.1.100"), instance, now - 300, now)  # behind/stale
    assert "no lease" in approver.node_problems(
        joined_node("auto-a1", "10.213.1.100"), instance, None, now)


def test_a_pass_lifts_the_taint_of_a_joined_node_that_passes_and_no_other(
        api: list[str], tmp_path: Path) -> None:
    # The record (see `api`) lists node-7 (10.213.1.30) and node-8 (10.213.1.31).
    fresh = approver.now_rfc3339()
    FakeApi.csrs = []
    FakeApi.nodes = [joined_node("node-7", "10.213.1.30"),       # passes
                     joined_node("node-8", "10.213.2.55"),       # wrong address
                     joined_node("node-1", "10.213.1.20")]       # inventory node
    FakeApi.leases = {"node-7": fresh, "node-8": fresh, "node-1": fresh}
    assert approver.main(api) == 0
    assert [p[0] for p in FakeApi.patches] == ["/api/v1/nodes/node-7"]
    _, content_type, patch = FakeApi.patches[0]
    assert content_type == "application/json-patch+json"
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "41"}
    assert patch[1]["value"] == [{"key": "example.com/keep", "effect": "NoSchedule"}]


def test_the_taint_is_the_one_kubelets_register_with() -> None:
    from bootstrap.node import kubelet_config
    assert approver.CHECKS_TAINT == kubelet_config.CHECKS_TAINT
