"""What the approver's and the webhook's tests share: certificate requests as the API lists
them, an identity source held in memory, and a "cloud" that signs identity documents."""

from __future__ import annotations

import base64
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from bootstrap.node.csr_rules import SIGNER_CLIENT, SIGNER_SERVING
from bootstrap.node.instance_identity import LAB_ACCOUNT, Instance, identity_token

KEY = ec.generate_private_key(ec.SECP256R1())
ID7, ID8, ID9, ID10, ID11 = (f"i-0{n:016x}" for n in (7, 8, 9, 10, 11))
NODE7 = "ip-10-213-1-30.lab.internal"
POOL_GROUPS = ["system:bootstrappers", "system:bootstrappers:mzk:lab-a", "system:authenticated"]
NODE_GROUPS = ["system:nodes", "system:authenticated"]
CLIENT = ["digital signature", "client auth"]
SERVING = ["digital signature", "key encipherment", "server auth"]


def pem_csr(cn: str = f"system:node:{NODE7}", orgs: tuple[str, ...] = ("system:nodes",),
            dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), emails: tuple[str, ...] = (),
            uris: tuple[str, ...] = (), key: Any = None) -> bytes:
    name = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    name += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(name))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.RFC822Name(e) for e in emails] + [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    key = key or KEY
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def make_csr(signer: str = SIGNER_CLIENT, user: str = f"mzk:instance:{ID7}",
             groups: list[str] | None = None, usages: list[str] | None = None,
             name: str = "csr-1", conditions: tuple[dict[str, str], ...] = (),
             pem: bytes | None = None, created: str = "2026-12-06T10:00:00Z",
             extra: dict[str, list[str]] | None = None, certificate: bytes | None = None,
             **subject: Any) -> dict[str, Any]:
    """A CSR object as the API lists it; defaults: instance ID7 joining as its own name."""
    spec: dict[str, Any] = {"request": base64.b64encode(pem or pem_csr(**subject)).decode(),
                            "signerName": signer, "username": user,
                            "groups": POOL_GROUPS if groups is None else groups,
                            "usages": CLIENT if usages is None else usages}
    if extra is not None:
        spec["extra"] = extra
    status: dict[str, Any] = {"conditions": list(conditions)} if conditions else {}
    if certificate:
        status["certificate"] = base64.b64encode(certificate).decode()
    return {"metadata": {"name": name, "resourceVersion": "41", "creationTimestamp": created},
            "spec": spec, "status": status}


def serving_csr(**kw: Any) -> dict[str, Any]:
    defaults = {"signer": SIGNER_SERVING, "user": f"system:node:{NODE7}", "groups": NODE_GROUPS,
                "usages": SERVING, "dns": (NODE7,), "ips": ("10.213.1.30",)}
    return make_csr(**{**defaults, **kw})


class Record:
    """An identity source held in memory; counts its look-ups."""

    region = "lab"

    def __init__(self, *instances: Instance) -> None:
        self.instances = {i.name: i for i in instances}
        self.ids = {i.instance_id: i for i in instances}
        self.calls: list[str] = []

    def lookup(self, name: str) -> Instance | None:
        self.calls.append(f"name:{name}")
        return self.instances.get(name)

    def by_id(self, instance_id: str) -> Instance | None:
        self.calls.append(f"id:{instance_id}")
        return self.ids.get(instance_id)

    def prefetch(self, instance_ids: Iterable[str]) -> None:
        self.calls.append(f"prefetch:{','.join(sorted(instance_ids))}")


def instances() -> list[Instance]:
    """ID7 runs in lab-a (named NODE7); ID8 runs in lab-a, registered as a Node; ID9 runs in
    lab-b; ID10 is stopped; ID11 runs in lab-a, a sibling of ID7 not yet registered."""
    return [
        Instance(NODE7, "lab-a", "running", ("10.213.1.30", "fd00:213::30"), (NODE7,), ID7,
                 LAB_ACCOUNT),
        Instance("ip-10-213-1-31.lab.internal", "lab-a", "running", ("10.213.1.31",), (), ID8,
                 LAB_ACCOUNT),
        Instance("ip-10-213-2-30.lab.internal", "lab-b", "running", ("10.213.2.30",), (), ID9,
                 LAB_ACCOUNT),
        Instance("ip-10-213-1-32.lab.internal", "lab-a", "stopped", ("10.213.1.32",), (), ID10,
                 LAB_ACCOUNT),
        Instance("ip-10-213-1-33.lab.internal", "lab-a", "running", ("10.213.1.33",), (), ID11,
                 LAB_ACCOUNT),
    ]


def registered(name: str) -> bool:
    return name == "ip-10-213-1-31.lab.internal"


class Cloud:
    """Signs instance identity documents as a cloud does (RSA PKCS#1 v1.5, SHA-256)."""

    def __init__(self, bits: int = 2048) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=bits)

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    def document(self, instance_id: str = ID7, account: str = LAB_ACCOUNT, region: str = "lab",
                 private_ip: str = "10.213.1.30") -> bytes:
        return json.dumps({"accountId": account, "architecture": "x86_64",
                           "availabilityZone": "lab-a", "imageId": "ami-00000000",
                           "instanceId": instance_id, "instanceType": "lab.small",
                           "pendingTime": "2026-12-06T10:00:00Z", "privateIp": private_ip,
                           "region": region, "version": "2017-09-30"}, indent=2).encode()

    def sign(self, document: bytes) -> bytes:
        return self.key.sign(document, padding.PKCS1v15(), hashes.SHA256())

    def token(self, **fields: Any) -> str:
        document = self.document(**fields)
        return identity_token(document, self.sign(document))


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
