"""Names and modes of the PKI directory that every PKI module shares (see `issue`)."""

from __future__ import annotations

LOCAL = "local"  # DIR/local: the operator's own files, never a host's
MANIFEST = "manifest.json"  # DIR/local/manifest.json: the hosts written last time
MANIFEST_PATH = f"{LOCAL}/{MANIFEST}"
KEY_MODE = 0o600
CERT_MODE = 0o644
