"""Helpers the PKI tests share: the example inventory as data, parsing it, reading a
certificate, and a snapshot of the files under a directory."""

from __future__ import annotations

import copy
import hashlib
import os
import stat
from pathlib import Path

import yaml
from cryptography import x509

from bootstrap import inventory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "inventory.yaml"


def example_data(key_type: str = "ecdsa") -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["pki"]["key_type"] = key_type
    return data


def load(data: dict) -> inventory.Inventory:
    return inventory.parse(copy.deepcopy(data), source="test")


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """path -> (sha256, mode, mtime_ns) of every file under root."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            st = p.stat()
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out
