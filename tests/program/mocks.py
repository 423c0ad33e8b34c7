"""The AWS mocks and the evaluation harness live in `components/review/mocks.py` and
`components/review/evaluation.py` (one copy, shared with `bin/mzk render` and `diff`); the
program tests import them from here too.

`BootstrapMocks` also answers for the bootstrap resource as its provider's create does (a CA
certificate), so that the node pools' user data is the join script it is after a real
`pulumi up`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.review.evaluation import Evaluation, RecordingMonitor, evaluate, program
from components.review.mocks import ACCOUNT, AWSError, AwsMocks, Registered

BOOTSTRAP = "pulumi-python:dynamic/multizone:ClusterBootstrap"


def ca_certificate(name: str = "kubernetes") -> str:
    """A self-signed CA certificate (PEM), as the bootstrap's `ca.crt` is."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class BootstrapMocks(AwsMocks):
    """AWS as `AwsMocks`; the bootstrap resource answers with a CA."""

    ca: str = field(default_factory=ca_certificate)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        rid, outputs = super().new_resource(args)
        if args.typ == BOOTSTRAP:
            outputs = {**outputs, "plan": [], "applied": [], "ca_certificate": self.ca}
            self.resources[-1].outputs = outputs
        return rid, outputs


def evaluate_bootstrapped(stack: str, config: dict[str, str]) -> Evaluation:
    """`evaluate` with the bootstrap resource answering as after a real `pulumi up`."""
    return evaluate(stack, config, BootstrapMocks(region=config.get("aws:region", "eu-west-1")))


__all__ = ["ACCOUNT", "AWSError", "AwsMocks", "BOOTSTRAP", "BootstrapMocks", "Evaluation",
           "RecordingMonitor", "Registered", "ca_certificate", "evaluate",
           "evaluate_bootstrapped", "program"]
