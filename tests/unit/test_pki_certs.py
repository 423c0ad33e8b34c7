"""Certificates: key usages by key type (RFC 5480), CA path length, convergence near the end
of a CA's life, and the near-expiry report for `check`."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pki_support import cert, example_data, load, snapshot

from bootstrap.pki import certs, generate, kubeconfig
from bootstrap.pki.expiry import near_expiry
from bootstrap.pki.table import SANs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "inventory.yaml"
PKI = "etc/kubernetes/pki"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# Leaves of the example: 8 files (the document's 7 and the CSR approver's) and 3 kubeconfigs
# per control-plane host, a serving certificate and kubelet.conf per node, and the
# operator's admin.conf; the example runs
# Konnectivity: a proxy-server certificate per control-plane host, an agent's per node
LEAVES = 3 * (8 + 3) + 3 * 2 + 1 + 3 + 3




def every_leaf(out: Path) -> list[tuple[str, x509.Certificate]]:
    """(where, certificate) of every leaf: files and the kubeconfigs' client certificates."""
    found = []
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.suffix == ".crt" and "ca" not in path.stem.split("-"):
            found.append((rel, cert(path)))
        elif path.suffix == ".conf":
            pem, _key = kubeconfig.credentials(path.read_bytes())
            found.append((rel, x509.load_pem_x509_certificate(pem)))
    return found


@pytest.fixture(scope="module")
def ecdsa_pki(tmp_path_factory):
    out = tmp_path_factory.mktemp("ecdsa") / "pki"
    data = example_data()
    generate(load(data), out, now=T0, workers=1)
    return data, out


# --------------------------------------------------------------------------- key usages


def test_ecdsa_certificates_carry_no_key_encipherment(ecdsa_pki):
    _data, out = ecdsa_pki
    leaves = every_leaf(out)
    assert len(leaves) == LEAVES  # control plane, nodes, the operator's admin
    for where, c in leaves:
        assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
        assert certs.facts(c).key_usages == {"digital_signature"}, where
    for name in ("ca", "etcd/ca", "front-proxy-ca", "konnectivity/ca"):
        facts = certs.facts(cert(out / "local/pki" / f"{name}.crt"))
        assert facts.key_usages == {"digital_signature", "key_cert_sign"}, name


def test_rsa_certificates_keep_key_encipherment():
    key = certs.new_key(certs.KeySpec("rsa"))
    ca = certs.new_ca("kubernetes-ca", key, T0, 3650)
    leaf = certs.new_leaf("kube-apiserver", (), ("server", "client"), SANs(dns=("cp-a",)),
                          key, ca, key, T0, 365)
    assert certs.facts(ca).key_usages == {"digital_signature", "key_encipherment",
                                          "key_cert_sign"}
    assert certs.facts(leaf).key_usages == {"digital_signature", "key_encipherment"}
    assert certs.why_stale(leaf, key, cn="kube-apiserver", orgs=(), kinds=("server", "client"),
                           sans=SANs(dns=("cp-a",)), ca_cert=ca, key_spec=certs.KeySpec("rsa"),
                           now=T0, renew_before=dt.timedelta(days=30)) is None


def test_an_ecdsa_leaf_with_key_encipherment_is_reissued_once(tmp_path):
    """Leaves written before the RFC 5480 fix are replaced on the next run, then kept."""
    data = example_data()
    out = tmp_path / "pki"
    generate(load(data), out, now=T0, workers=1)
    path = out / "cp-a" / PKI / "apiserver-kubelet-client.crt"
    old, ca_cert = cert(path), cert(out / "local/pki/ca.crt")
    ca_key = certs.load_key((out / "local/pki/ca.key").read_bytes())
    builder = x509.CertificateBuilder(
        subject_name=old.subject, issuer_name=old.issuer, public_key=old.public_key(),
        serial_number=old.serial_number, not_valid_before=old.not_valid_before_utc,
        not_valid_after=old.not_valid_after_utc,
        extensions=[e for e in old.extensions if not isinstance(e.value, x509.KeyUsage)])
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=True, key_encipherment=True, key_cert_sign=False,
        content_commitment=False, data_encipherment=False, key_agreement=False,
        crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
    path.write_bytes(certs.cert_pem(builder.sign(ca_key, hashes.SHA256())))
    assert certs.signed_by(cert(path), ca_cert)
    result = generate(load(data), out, now=T0, workers=1)
    assert result.hosts["cp-a"].issued == (
        "kube-apiserver-kubelet-client: key usages differ from its kind",)
    assert certs.facts(cert(path)).key_usages == {"digital_signature"}
    assert not generate(load(data), out, now=T0, workers=1).changed


# --------------------------------------------------------------------------- CA path length


def test_cas_are_limited_to_signing_leaves(ecdsa_pki):
    _data, out = ecdsa_pki
    for name in ("ca", "etcd/ca", "front-proxy-ca", "konnectivity/ca"):
        ext = cert(out / "local/pki" / f"{name}.crt").extensions.get_extension_for_class(
            x509.BasicConstraints)
        assert ext.critical
        assert (ext.value.ca, ext.value.path_length) == (True, 0), name


def test_a_ca_our_ca_signed_is_not_trusted_by_openssl(ecdsa_pki, tmp_path):
    """pathlen 0 at work: a CA below ours, and a leaf it signs, do not verify."""
    _data, out = ecdsa_pki
    ca_cert = cert(out / "local/pki/ca.crt")
    ca_key = certs.load_key((out / "local/pki/ca.key").read_bytes())
    sub_key = certs.new_key(certs.KeySpec("ecdsa"))
    sub = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=rogue"))
           .issuer_name(ca_cert.subject).public_key(sub_key.public_key())
           .serial_number(7).not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=30))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(ca_key, hashes.SHA256()))
    leaf_key = certs.new_key(certs.KeySpec("ecdsa"))
    leaf = certs.new_leaf("victim", (), ("server",), SANs(dns=("victim",)), leaf_key, sub,
                          sub_key, T0, 10)
    (tmp_path / "sub.crt").write_bytes(certs.cert_pem(sub))
    (tmp_path / "leaf.crt").write_bytes(certs.cert_pem(leaf))
    proc = subprocess.run(["openssl", "verify", "-attime", str(int(T0.timestamp()) + 3600),
                           "-CAfile", str(out / "local/pki/ca.crt"), "-untrusted",
                           str(tmp_path / "sub.crt"), str(tmp_path / "leaf.crt")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "path length" in (proc.stdout + proc.stderr).lower()


# --------------------------------------------------------------------------- end of a CA's life


@pytest.fixture
def late_in_ca_life(tmp_path):
    """A PKI made at T0, and a moment 10 days before its CAs end (inside their last
    renewal window of 30 days; every leaf from T0 has long expired by then)."""
    data = example_data()
    out = tmp_path / "pki"
    generate(load(data), out, now=T0, workers=1)
    ca_end = cert(out / "local/pki/ca.crt").not_valid_after_utc
    return data, out, ca_end, ca_end - dt.timedelta(days=10)


def test_leaves_are_reissued_once_near_the_cas_end_then_kept(late_in_ca_life):
    data, out, ca_end, late = late_in_ca_life
    first = generate(load(data), out, now=late, workers=1)
    assert all(first.hosts[h].issued for h in first.hosts)
    for where, c in every_leaf(out):
        assert c.not_valid_after_utc == ca_end, where  # capped at the CA's end
    before = snapshot(out)
    again = generate(load(data), out, now=late, workers=1)
    assert not again.changed
    assert all(not h.issued for h in again.hosts.values()) and not again.local.issued
    assert snapshot(out) == before
    assert any(f"the kubernetes-ca CA expires in 10 days ({ca_end:%Y-%m-%d})" in w
               and "rotate the CA" in w for w in again.warnings)


def test_a_leaf_ending_before_its_ca_is_still_renewed(late_in_ca_life):
    data, out, ca_end, _late = late_in_ca_life
    inside_leaf_window = T0 + dt.timedelta(days=365 - 20)  # the CA has years left
    result = generate(load(data), out, now=inside_leaf_window, workers=1)
    assert all("inside the renewal window" in line for line in result.hosts["cp-a"].issued)
    assert result.hosts["cp-a"].issued
    assert not result.warnings
    apiserver = cert(out / "cp-a" / PKI / "apiserver.crt")
    assert apiserver.not_valid_after_utc < ca_end


# --------------------------------------------------------------------------- near_expiry


def test_near_expiry_names_a_ca_inside_the_window_with_days_left(late_in_ca_life):
    data, out, ca_end, _late = late_in_ca_life
    generate(load(data), out, now=ca_end - dt.timedelta(days=40), workers=1)
    now = ca_end - dt.timedelta(days=12)
    lines = near_expiry(out, now, 30)
    assert lines[:3] == [
        f"kubernetes-ca (local/pki/ca.crt) expires in 12 days ({ca_end:%Y-%m-%d}); rotate it",
        f"etcd-ca (local/pki/etcd/ca.crt) expires in 12 days ({ca_end:%Y-%m-%d}); rotate it",
        f"kubernetes-front-proxy-ca (local/pki/front-proxy-ca.crt) expires in 12 days "
        f"({ca_end:%Y-%m-%d}); rotate it",
    ]
    assert lines[3].startswith("konnectivity-ca (local/pki/konnectivity/ca.crt) expires in 12")
    # every leaf now ends with its CA, and says that only a new CA helps
    assert len(lines) == 4 + LEAVES
    assert all(line.endswith(": rotate that CA") for line in lines[4:])
    assert "cp-a/etc/kubernetes/pki/apiserver.crt" in " ".join(lines)


def test_near_expiry_lists_leaves_soonest_first_and_nothing_when_all_is_well(ecdsa_pki):
    _data, out = ecdsa_pki
    before = snapshot(out)
    assert near_expiry(out, T0, 30) == []
    lines = near_expiry(out, T0 + dt.timedelta(days=350), 30)
    assert len(lines) == LEAVES  # leaves only: the CAs have years left
    assert all("expires in 15 days" in line and "re-issue it" in line for line in lines)
    expired = near_expiry(out, T0 + dt.timedelta(days=400), 30)
    assert all(" expired 35 days ago " in line for line in expired)
    assert snapshot(out) == before  # read-only
    assert near_expiry(out / "missing", T0, 30) == []


def test_a_leaf_has_the_extensions_of_its_row(ecdsa_pki):
    """new_leaf builds in one step from cached extension values; what comes out is the
    row: constraints and usages critical, the CA's key identifier, the SANs."""
    _data, out = ecdsa_pki
    ca = cert(out / "local/pki/etcd/ca.crt")
    leaf = cert(out / "cp-b" / PKI / "etcd/peer.crt")
    ext = {type(e.value): e for e in leaf.extensions}
    assert set(ext) == {x509.BasicConstraints, x509.KeyUsage, x509.ExtendedKeyUsage,
                        x509.AuthorityKeyIdentifier, x509.SubjectAlternativeName}
    assert ext[x509.BasicConstraints].critical and not ext[x509.BasicConstraints].value.ca
    assert ext[x509.KeyUsage].critical
    assert not ext[x509.ExtendedKeyUsage].critical
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ext[x509.AuthorityKeyIdentifier].value.key_identifier == ski.digest
    assert set(ext[x509.SubjectAlternativeName].value.get_values_for_type(x509.DNSName)) == {
        "cp-b", "localhost"}
    assert leaf.not_valid_before_utc == T0 - certs.CLOCK_SKEW
    assert leaf.not_valid_after_utc == T0 + dt.timedelta(days=365)
