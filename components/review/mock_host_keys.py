"""Host keys as the mocks hand them out: a seeded ed25519 key per resource, serialized the
same way every time, so that a render changes only where the program changed.

Its own module because making an OpenSSH key text stable (its random check integer fixed)
is a detail of the key format, not of AWS's answers.
"""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def _fixed_check(pem: str, check: bytes) -> str:
    """The OpenSSH key with its random check integer (twice, at the start of the private
    section) set to `check`, so that the same key serializes to the same text."""
    lines = pem.strip().splitlines()
    blob = bytearray(base64.b64decode("".join(lines[1:-1])))
    at = len(b"openssh-key-v1\0")
    for _ in range(3):  # cipher name, KDF name, KDF options
        at += 4 + int.from_bytes(blob[at:at + 4], "big")
    at += 4  # number of keys
    at += 4 + int.from_bytes(blob[at:at + 4], "big")  # the public key
    at += 4  # length of the private section
    blob[at:at + 8] = check * 2
    body = base64.b64encode(bytes(blob)).decode()
    wrapped = [body[i:i + 70] for i in range(0, len(body), 70)]
    return "\n".join([lines[0], *wrapped, lines[-1]]) + "\n"


def _host_key(rng: random.Random, host: str) -> tuple[str, dict[str, Any]]:
    """What `HostKeyProvider.create` returns (id and outputs), from a seeded key: the real
    provider makes a key once and keeps it in state, so one evaluation to the next the
    key stays the same; a fresh random key here would change every render."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    private = _fixed_check(private, rng.randbytes(4))
    key_id = hashlib.sha256(public.encode()).hexdigest()[:32]
    return key_id, {"host": host, "public_key": public, "private_key": private}
