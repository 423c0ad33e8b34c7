"""Which certificates of a PKI directory end soon: one line each, for `check` to print.

Read-only: nothing is written, no mode is changed, no link is followed (a link where a
certificate should be is refused, as `generate` refuses it).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography import x509

from bootstrap.errors import PKIError
from bootstrap.pki import kubeconfig
from bootstrap.pki.files import Tree
from bootstrap.pki.issue import HOST_NAME, LOCAL, MANIFEST_PATH
from bootstrap.pki.table import CAS, KUBECONFIG_CA, KUBECONFIGS, LEAVES

_REISSUE = "re-issue it with `python -m bootstrap pki`"


def near_expiry(pki_dir: Path, now: dt.datetime, within_days: int) -> list[str]:
    """Lines for every CA and leaf under `pki_dir` (a `python -m bootstrap pki --out`
    directory) that ends within `within_days` of `now`, or has ended: CAs first, then the
    rest soonest first, e.g.

        kubernetes-ca (local/pki/ca.crt) expires in 12 days (2026-12-05); rotate it

    A leaf that ends together with its CA cannot be renewed without a new CA, and says so.
    Files that are missing or unreadable are left to `generate`, which re-issues them.
    """
    try:
        tree = Tree.open(str(pki_dir))
    except FileNotFoundError:
        return []
    limit = now + dt.timedelta(days=within_days)
    with tree:
        ca_ends: dict[str, dt.datetime] = {}
        lines: list[str] = []
        for ca in CAS:
            rel = f"{LOCAL}/pki/{ca.base}.crt"
            cert = _certificate(tree.read(rel))
            if cert is None:
                continue
            ca_ends[ca.name] = cert.not_valid_after_utc
            if cert.not_valid_after_utc <= limit:
                lines.append(_line(ca.name, rel, cert.not_valid_after_utc, now, "rotate it"))

        leaves: list[tuple[dt.datetime, str]] = []

        def leaf(name: str, rel: str, cert: x509.Certificate | None, ca_name: str) -> None:
            if cert is None or cert.not_valid_after_utc > limit:
                return
            end = cert.not_valid_after_utc
            ca_end = ca_ends.get(ca_name)
            fix = (f"it ends with {ca_name}: rotate that CA" if ca_end and end >= ca_end
                   else _REISSUE)
            leaves.append((end, _line(name, rel, end, now, fix)))

        admin = f"{LOCAL}/admin.conf"
        leaf("admin.conf", admin, _kubeconfig_certificate(tree.read(admin)), KUBECONFIG_CA)
        for host in _hosts(tree):
            for row in LEAVES:
                rel = f"{host}{row.cert_path}"
                leaf(row.name, rel, _certificate(tree.read(rel)), row.ca)
            for kc in KUBECONFIGS:
                rel = f"{host}{kc.path}"
                leaf(kc.file, rel, _kubeconfig_certificate(tree.read(rel)), KUBECONFIG_CA)
    return lines + [line for _end, line in sorted(leaves)]


def _line(name: str, rel: str, end: dt.datetime, now: dt.datetime, fix: str) -> str:
    left = end - now
    if left.total_seconds() <= 0:
        return f"{name} ({rel}) expired {(-left).days} days ago ({end:%Y-%m-%d}); {fix}"
    return f"{name} ({rel}) expires in {left.days} days ({end:%Y-%m-%d}); {fix}"


def _certificate(pem: bytes | None) -> x509.Certificate | None:
    if pem is None:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def _kubeconfig_certificate(data: bytes | None) -> x509.Certificate | None:
    if data is None:
        return None
    try:
        cert_pem, _key = kubeconfig.credentials(data)
    except ValueError:
        return None
    return _certificate(cert_pem)


def _hosts(tree: Tree) -> list[str]:
    """The host directories of the manifest; those whose names could not be a host's (a
    manifest edited by hand, say) are not read."""
    data = tree.read(MANIFEST_PATH)
    if data is None:
        return []
    try:
        names = json.loads(data)["hosts"]
    except (ValueError, KeyError, TypeError) as err:
        raise PKIError(f"{tree.full(MANIFEST_PATH)}: not a PKI manifest ({err}); restore "
                       "it") from err
    if not isinstance(names, list):
        return []
    return sorted(n for n in names if isinstance(n, str) and n != LOCAL and HOST_NAME.match(n))
