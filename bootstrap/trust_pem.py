"""The rule for a trust anchor given as PEM text: certificates or RSA public keys.

Whose signatures on instance identity documents the CSR approver accepts
(`cluster.instance_identity_trust` in the inventory: the lab's "cloud" key; AWS's regional
certificates are pinned in the project instead). Checked where the inventory is read, so
that a pasted private key, a truncated block or an EC key is one line before any host is
touched, not an approver that accepts nobody.
"""

from __future__ import annotations

import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bootstrap.rules import Problem, describe

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
HINT = ("give PEM certificates or RSA public keys (-----BEGIN CERTIFICATE----- or "
        "-----BEGIN PUBLIC KEY-----), e.g. the lab's cloud/identity.pem")


def trust_pem(value: Any, field: str) -> str:
    """`value` if it is one or more PEM blocks, each a certificate or a public key of RSA."""
    if not isinstance(value, str):
        raise Problem(field, f"expected PEM text, got {describe(value)}; {HINT}")
    blocks = list(_BLOCK.finditer(value))
    if not blocks:
        raise Problem(field, f"no PEM block found; {HINT}")
    for n, block in enumerate(blocks, 1):
        kind, pem = block.group(1), block.group(0).encode()
        if kind not in ("CERTIFICATE", "PUBLIC KEY"):
            raise Problem(field, f"PEM block {n} is a {kind.lower()}, which is not for "
                                 f"here; {HINT}")
        try:
            key = (x509.load_pem_x509_certificate(pem).public_key() if kind == "CERTIFICATE"
                   else load_pem_public_key(pem))
        except ValueError as err:
            raise Problem(field, f"PEM block {n} ({kind.lower()}) does not parse: "
                                 f"{err}; {HINT}") from err
        if not isinstance(key, rsa.RSAPublicKey):
            kind = ("an elliptic-curve" if isinstance(key, ec.EllipticCurvePublicKey)
                    else "a non-RSA")
            raise Problem(field, f"PEM block {n} holds {kind} key; identity documents are "
                                 f"signed with RSA; {HINT}")
    return value
