"""Pinned SSH host keys: the one key the inventory gives for a host, and nothing else.

Why a module of its own: both the bootstrap's own connections (bootstrap.ssh) and the files
it writes for others (the egress tunnels' known_hosts) name and compare host keys the same
way. Host keys come only from the inventory: the user's known_hosts is never read and an
unknown or different key is refused with both fingerprints, never added.
"""

from __future__ import annotations

import base64
import hashlib

import paramiko

from bootstrap.errors import HostConnectionError


def fingerprint(key: str | paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint (`SHA256:<base64, no padding>`) of a key or key line."""
    if isinstance(key, str):
        blob = base64.b64decode(key.split()[1])
    else:
        blob = key.asbytes()
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def parse_public_key(line: str) -> paramiko.PKey:
    """An OpenSSH public key line (`type base64 [comment]`) as a paramiko key."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key line: {line!r}")
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))


def known_name(address: str, port: int) -> str:
    """The name paramiko looks a server's key up under: `addr`, or `[addr]:port` off 22."""
    return address if port == 22 else f"[{address}]:{port}"


def pinned_host_keys(address: str, port: int, key_line: str) -> paramiko.HostKeys:
    """A HostKeys that holds exactly one key: the inventory's key for this address."""
    keys = paramiko.HostKeys()
    key = parse_public_key(key_line)
    keys.add(known_name(address, port), key.get_name(), key)
    return keys


def mismatch_message(host: str, expected: str, presented: paramiko.PKey) -> str:
    return (f"{host}: host key mismatch: the inventory pins {fingerprint(expected)} but the "
            f"host presented {fingerprint(presented)} ({presented.get_name()}); the host was "
            "rebuilt or someone is in the middle: check the host's key and update the "
            "inventory, nothing was sent to it")


class RejectUnpinnedKey(paramiko.MissingHostKeyPolicy):
    """Refuse every key that is not the pinned one (paramiko asks only for unknown keys)."""

    def __init__(self, host: str, expected: str) -> None:
        self.host = host
        self.expected = expected

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise HostConnectionError(mismatch_message(self.host, self.expected, key))
