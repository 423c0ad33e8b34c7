"""The lab's "cloud": the key that signs instance identity documents, and what each launched
host's instance metadata service would serve it.

On AWS a node proves which instance it is with the identity document EC2 signs for it
(IMDSv2 `/latest/dynamic/instance-identity/document` and `.../signature`); the control
plane's approver verifies the signature against AWS's certificate for the region and then
looks the instance up by ID. The lab does the same with its own RSA key: `lab up` makes it
(`DIR/cloud/identity-key.pem`, 0600, outside every host's file tree) and publishes its
certificate (`DIR/cloud/identity.pem`) in the inventory as `cluster.instance_identity_trust`;
`lab launch` signs each new host's document and leaves what IMDS would answer in that host's
own /run (`/run/mzk-imds/<IMDS path>`, root only), where its user data reads it.

The document has AWS's fields and layout (pretty JSON, keys sorted), account
000000000000, region `lab`. The lab's limit: its hosts are namespaces of one machine, so a
root process on a lab host could reach DIR; pods cannot (their own mount namespace).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from bootstrap.pki import files

CLOUD_DIR = "cloud"
KEY_FILE = f"{CLOUD_DIR}/identity-key.pem"
TRUST_FILE = f"{CLOUD_DIR}/identity.pem"
ACCOUNT = "000000000000"
REGION = "lab"
HOST_DIR = "/run/mzk-imds"  # on each launched host: what its IMDS serves, root only
DOCUMENT = "dynamic/instance-identity/document"
SIGNATURE = "dynamic/instance-identity/signature"
INSTANCE_TYPE = "lab.node"
IMAGE_ID = "ami-0000000000000000a"  # the lab's one "image"
VALIDITY = dt.timedelta(days=3650)


def ensure_key(lab_dir: Path) -> str:
    """The lab's signing key (made once, 0600) and its self-signed certificate; returns the
    certificate's PEM (what the inventory trusts). A key without its certificate, or a
    certificate of another key, gets a new certificate."""
    key_path, cert_path = lab_dir / KEY_FILE, lab_dir / TRUST_FILE
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey), key_path
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        files.write(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600, durable=True)
    want = key.public_key().public_numbers()
    if cert_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.public_key().public_numbers() == want:  # type: ignore[union-attr]
            return cert_path.read_text()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         "mzk-lab instance identity signer")])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    files.write(cert_path, pem, 0o644, durable=True)
    return pem.decode()


def remove(lab_dir: Path) -> None:
    """`lab down`: the key goes with the lab."""
    shutil.rmtree(lab_dir / CLOUD_DIR, ignore_errors=True)


def new_instance_id() -> str:
    """`i-` and 17 lowercase hex digits, as EC2's."""
    return "i-" + secrets.token_hex(9)[:17]


def document(instance_id: str, zone: str, private_ip: str, pending: dt.datetime) -> bytes:
    """The identity document of a lab instance, shaped as EC2's."""
    return json.dumps({
        "accountId": ACCOUNT, "architecture": "x86_64", "availabilityZone": zone,
        "imageId": IMAGE_ID, "instanceId": instance_id, "instanceType": INSTANCE_TYPE,
        "pendingTime": pending.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "privateIp": private_ip, "region": REGION, "version": "2017-09-30",
    }, indent=2, sort_keys=True).encode()


def sign(lab_dir: Path, content: bytes) -> bytes:
    """RSA PKCS#1 v1.5 over SHA-256 of the document, as EC2's `signature`."""
    key = serialization.load_pem_private_key((lab_dir / KEY_FILE).read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.sign(content, padding.PKCS1v15(), hashes.SHA256())


def served(content: bytes, signature: bytes, name: str, address: str, instance_id: str
           ) -> dict[str, bytes]:
    """IMDS path -> what it answers (the signature as base64 text, lines of 64)."""
    sig = base64.b64encode(signature).decode()
    return {DOCUMENT: content,
            SIGNATURE: "\n".join(sig[i:i + 64] for i in range(0, len(sig), 64)).encode(),
            "meta-data/local-hostname": name.encode(),
            "meta-data/local-ipv4": address.encode(),
            "meta-data/instance-id": instance_id.encode()}


def place(host_root: Path, answers: dict[str, bytes]) -> None:
    """Into a host's own file tree (`host_root` is its `/`): directories 0700, files 0600."""
    base = host_root / HOST_DIR.lstrip("/")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    base.chmod(0o700)
    for path, content in answers.items():
        files.write(base / path, content, 0o600)
    for directory in (d for d in base.rglob("*") if d.is_dir()):
        directory.chmod(0o700)


def read(host_root: Path) -> dict[str, bytes]:
    """What a host's IMDS serves (the lab's impostors copy another host's)."""
    base = host_root / HOST_DIR.lstrip("/")
    return {p.relative_to(base).as_posix(): p.read_bytes()
            for p in sorted(base.rglob("*")) if p.is_file()}
