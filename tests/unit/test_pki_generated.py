"""Generated PKI, parsed back and compared with the document's tables row by row, with
every chain verified (by cryptography and by the openssl command), file modes checked,
and re-runs shown to keep or re-issue exactly what they should."""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pki_support import cert, example_data, load, snapshot

from bootstrap.errors import PKIError
from bootstrap.pki import generate, kubeconfig
from bootstrap.pki.certs import facts, load_key, same_public_key, signed_by

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "inventory.yaml"
PKI = "/etc/kubernetes/pki"

# The document's "all certificates" table, typed out here beside it: CN, parent CA, O,
# kinds, and where the files go. The SANs are checked per host below.
DOC_LEAVES = {
    "etcd/server": ("kube-etcd", "etcd-ca", (), {"server_auth", "client_auth"}),
    "etcd/peer": ("kube-etcd-peer", "etcd-ca", (), {"server_auth", "client_auth"}),
    "etcd/healthcheck-client": ("kube-etcd-healthcheck-client", "etcd-ca", (),
                                {"client_auth"}),
    "apiserver-etcd-client": ("kube-apiserver-etcd-client", "etcd-ca", ("system:masters",),
                              {"client_auth"}),
    "apiserver": ("kube-apiserver", "kubernetes-ca", (), {"server_auth"}),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "kubernetes-ca",
                                 ("system:masters",), {"client_auth"}),
    "front-proxy-client": ("front-proxy-client", "kubernetes-front-proxy-ca", (),
                           {"client_auth"}),
}
DOC_CAS = {"ca": "kubernetes-ca", "etcd/ca": "etcd-ca",
           "front-proxy-ca": "kubernetes-front-proxy-ca"}
DOC_KUBECONFIGS = {
    "admin.conf": ("default-admin", "kubernetes-admin", ("system:masters",)),
    "controller-manager.conf": ("default-controller-manager",
                                "system:kube-controller-manager", ()),
    "scheduler.conf": ("default-scheduler", "system:kube-scheduler", ()),
}




def tunnel_data() -> dict:
    """The example in `ssh-tunnel` mode: hosts get exactly the document's files."""
    data = example_data()
    data["cluster"]["egress"] = "ssh-tunnel"
    data["ssh"]["authorized_keys"] = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAiayuIPqbcwPI4xnOIwHLZ9KXeTTK72PzxUaIfmZbJh"]
    return data


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    out = tmp_path_factory.mktemp("pki")
    inv = load(tunnel_data())
    result = generate(inv, out)
    return inv, out, result


def expected_sans(inv, host, which: str) -> tuple[set[str], set[str]]:
    if which in ("etcd/server", "etcd/peer"):
        return {host.name, "localhost"}, {host.address, "127.0.0.1"}
    if which == "apiserver":
        dns = {host.name, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster", "kubernetes.default.svc.cluster.local",
               "api.mz-example.internal", "api-a.mz-example.internal",
               "api-b.mz-example.internal", "api-c.mz-example.internal"}
        ips = {host.address, host.advertise_address, "10.96.0.1", "10.0.0.100",
               "10.0.16.100", "10.0.32.100", "10.0.48.100"}
        return dns, ips
    return set(), set()


def test_every_leaf_matches_its_row_on_every_control_plane_host(issued):
    inv, out, _ = issued
    for host in inv.control_plane:
        root = out / host.name / PKI.lstrip("/")
        cas = {name: cert(root / f"{base}.crt") for base, name in DOC_CAS.items()}
        for base, (cn, ca_name, orgs, ekus) in DOC_LEAVES.items():
            c = cert(root / f"{base}.crt")
            f = facts(c)
            assert f.cn == cn, base
            assert f.orgs == orgs, base
            assert f.issuer_cn == ca_name, base
            assert not f.is_ca
            # The document's kinds say "digital signature, key encipherment"; these keys are
            # ECDSA, which RFC 5480 forbids to carry keyEncipherment (RSA keeps it: see
            # test_pki_certs.py).
            assert f.key_usages == {"digital_signature"}, base
            assert f.ext_key_usages == ekus, base
            dns, ips = expected_sans(inv, host, base)
            assert (set(f.dns), set(f.ips)) == (dns, ips), base
            assert signed_by(c, cas[ca_name]), base
            key = load_key((root / f"{base}.key").read_bytes())
            assert same_public_key(c, key), base
            assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_cas_are_self_signed_cas_with_the_table_cn(issued):
    inv, out, _ = issued
    for base, name in DOC_CAS.items():
        c = cert(out / "local" / "pki" / f"{base}.crt")
        f = facts(c)
        assert f.is_ca and f.cn == name and f.issuer_cn == name
        assert "key_cert_sign" in f.key_usages
        assert signed_by(c, c)
        for host in inv.control_plane:  # every control-plane host holds the same CA
            copy_ = out / host.name / PKI.lstrip("/") / f"{base}.crt"
            assert copy_.read_bytes() == (out / "local" / "pki" / f"{base}.crt").read_bytes()


def test_chains_verify_with_openssl(issued):
    inv, out, _ = issued
    local = out / "local" / "pki"
    for host in inv.control_plane:
        root = out / host.name / PKI.lstrip("/")
        for base, (_cn, ca_name, _o, ekus) in DOC_LEAVES.items():
            ca_file = local / (next(b for b, n in DOC_CAS.items() if n == ca_name) + ".crt")
            purpose = "sslserver" if "server_auth" in ekus else "sslclient"
            proc = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile",
                                   str(ca_file), str(root / f"{base}.crt")],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr
    # and a leaf does not verify against the wrong CA
    proc = subprocess.run(["openssl", "verify", "-CAfile", str(local / "ca.crt"),
                           str(out / "cp-a" / PKI.lstrip("/") / "etcd" / "server.crt")],
                          capture_output=True, text=True)
    assert proc.returncode != 0


def test_kubeconfigs_match_the_user_accounts_table(issued):
    inv, out, _ = issued
    ca_pem = (out / "local" / "pki" / "ca.crt").read_bytes()
    ca = cert(out / "local" / "pki" / "ca.crt")
    for host in inv.control_plane:
        for name, (credential, cn, orgs) in DOC_KUBECONFIGS.items():
            parsed = kubeconfig.parse((out / host.name / "etc/kubernetes" / name).read_bytes())
            assert parsed.credential == credential
            assert parsed.server == f"https://{host.address}:6443"  # its own API server
            assert parsed.ca_pem == ca_pem
            c = x509.load_pem_x509_certificate(parsed.cert_pem)
            f = facts(c)
            assert (f.cn, f.orgs, f.issuer_cn) == (cn, orgs, "kubernetes-ca")
            assert f.ext_key_usages == {"client_auth"}
            assert signed_by(c, ca)
            assert same_public_key(c, load_key(parsed.key_pem))
            doc = yaml.safe_load((out / host.name / "etc/kubernetes" / name).read_text())
            assert doc["current-context"] == "default-system"
            assert doc["contexts"][0]["context"]["cluster"] == "default-cluster"
    operator = kubeconfig.parse((out / "local" / "admin.conf").read_bytes())
    assert operator.server == "https://api.mz-example.internal:6443"  # regional endpoint
    assert facts(x509.load_pem_x509_certificate(operator.cert_pem)).orgs == ("system:masters",)


def test_nodes_get_ca_kubelet_conf_for_their_zone_and_a_ca_signed_serving_cert(issued):
    inv, out, _ = issued
    ca = cert(out / "local" / "pki" / "ca.crt")
    for node in inv.nodes:
        root = out / node.name
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert files == ["etc/kubernetes/kubelet.conf", "etc/kubernetes/pki/ca.crt",
                         "var/lib/kubelet/pki/kubelet.crt", "var/lib/kubelet/pki/kubelet.key"]
        parsed = kubeconfig.parse((root / "etc/kubernetes/kubelet.conf").read_bytes())
        assert parsed.credential == "default-auth"
        assert parsed.server == inv.zone(node.zone).endpoint.url
        client = facts(x509.load_pem_x509_certificate(parsed.cert_pem))
        assert (client.cn, client.orgs) == (f"system:node:{node.name}", ("system:nodes",))
        assert client.ext_key_usages == {"client_auth"}
        serving_cert = cert(root / "var/lib/kubelet/pki/kubelet.crt")
        serving = facts(serving_cert)
        assert serving.cn == f"system:node:{node.name}"
        assert serving.ext_key_usages == {"server_auth"}
        assert (serving.dns, serving.ips) == ({node.name}, {node.address})
        assert signed_by(serving_cert, ca)


def test_control_plane_holds_exactly_the_documents_files(issued):
    inv, out, _ = issued
    doc_paths = {f"{PKI}/{b}.{ext}" for b in [*DOC_CAS, *DOC_LEAVES] for ext in ("crt", "key")}
    doc_paths |= {f"{PKI}/sa.key", f"{PKI}/sa.pub"}
    doc_paths |= {f"/etc/kubernetes/{k}" for k in DOC_KUBECONFIGS}
    # and our one design row for every control-plane host (table.py says why)
    doc_paths |= {f"{PKI}/csr-approver.crt", f"{PKI}/csr-approver.key"}
    for host in inv.control_plane:
        root = out / host.name
        files = {"/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        assert files == doc_paths


def test_modes_keys_and_kubeconfigs_0600_certs_0644_pki_dirs_0700(issued):
    _, out, _ = issued
    checked = 0
    for p in out.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            if p.name == "pki" or "pki" in p.relative_to(out).parts[1:]:
                assert mode == 0o700, p
            continue
        if p.suffix in (".key", ".conf"):
            assert mode == 0o600, p
            checked += 1
        elif p.suffix in (".crt", ".pub"):
            assert mode == 0o644, p
    assert checked > 30
    assert stat.S_IMODE((out / "local").stat().st_mode) == 0o700


def test_result_lists_files_per_host_with_contents(issued):
    inv, out, result = issued
    assert set(result.hosts) == {h.name for h in inv.hosts}
    for name, host in result.hosts.items():
        for f in host.files:
            assert (out / name / f.path.lstrip("/")).read_bytes() == f.content
            assert stat.S_IMODE((out / name / f.path.lstrip("/")).stat().st_mode) == f.mode


# --------------------------------------------------------------------------- re-runs


@pytest.fixture
def fresh(tmp_path):
    data = tunnel_data()
    out = tmp_path / "pki"
    generate(load(data), out)
    return data, out


def test_second_run_changes_nothing(fresh):
    data, out = fresh
    before = snapshot(out)
    result = generate(load(data), out)
    assert not result.changed
    assert all(not h.issued for h in result.hosts.values())
    assert snapshot(out) == before


def test_changing_one_nodes_address_reissues_only_that_node(fresh):
    data, out = fresh
    before = snapshot(out)
    node = next(h for h in data["hosts"] if h["name"] == "node-b1")
    node["address"] = "10.0.33.99"
    result = generate(load(data), out)
    after = snapshot(out)
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed == {"node-b1/var/lib/kubelet/pki/kubelet.crt"}
    assert result.hosts["node-b1"].issued == ("kubelet-serving: SANs differ",)
    assert "10.0.33.99" in facts(cert(out / changed.pop())).ips


def test_changing_one_control_plane_address_touches_only_that_host(fresh):
    data, out = fresh
    before = snapshot(out)
    next(h for h in data["hosts"] if h["name"] == "cp-b")["address"] = "10.0.32.77"
    result = generate(load(data), out)
    after = snapshot(out)
    changed = {p.split("/")[0] for p in after if after[p] != before.get(p)}
    assert changed == {"cp-b"}
    reissued = {line.split(":")[0] for line in result.hosts["cp-b"].issued}
    assert reissued == {"kube-etcd", "kube-etcd-peer", "kube-apiserver"}
    cm = kubeconfig.parse((out / "cp-b/etc/kubernetes/controller-manager.conf").read_bytes())
    assert cm.server == "https://10.0.32.77:6443"


def test_new_load_balancer_address_reissues_api_servers_only(fresh):
    data, out = fresh
    data["endpoints"]["regional"]["address"] = "10.0.0.200"
    result = generate(load(data), out)
    for host in ("cp-a", "cp-b", "cp-c"):
        assert result.hosts[host].issued == ("kube-apiserver: SANs differ",)
    assert all(not result.hosts[n].issued for n in ("node-a1", "node-b1", "node-c1"))


def test_certificates_inside_the_renewal_window_are_reissued(fresh):
    data, out = fresh
    inv = load(data)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=inv.pki.validity_days
                                                   - inv.pki.renew_before_days + 1)
    result = generate(inv, out, now=later)
    for host in inv.hosts:
        assert result.hosts[host.name].issued
        assert all("renewal window" in line for line in result.hosts[host.name].issued)
    new = facts(cert(out / "cp-a" / PKI.lstrip("/") / "apiserver.crt"))
    assert new.not_after > later + dt.timedelta(days=300)


def test_a_damaged_certificate_is_reissued(fresh):
    data, out = fresh
    target = out / "cp-c" / PKI.lstrip("/") / "front-proxy-client.crt"
    target.write_bytes(b"garbage")
    result = generate(load(data), out)
    assert result.hosts["cp-c"].issued == ("front-proxy-client: unreadable",)
    assert facts(cert(target)).cn == "front-proxy-client"


def test_a_replaced_ca_is_a_loud_error_naming_the_file(fresh, tmp_path):
    data, out = fresh
    other = tmp_path / "other"
    generate(load(data), other)
    for name in ("ca.crt", "ca.key"):
        shutil.copy(other / "local" / "pki" / name, out / "local" / "pki" / name)
    before = snapshot(out / "cp-a")
    with pytest.raises(PKIError, match=r"apiserver\.crt: signed by a different kubernetes-ca"):
        generate(load(data), out)
    assert snapshot(out / "cp-a") == before


def test_a_deleted_ca_is_not_silently_replaced(fresh):
    data, out = fresh
    for name in ("ca.crt", "ca.key"):
        (out / "local" / "pki" / name).unlink()
    before = snapshot(out)
    with pytest.raises(PKIError, match=r"local/pki/ca\.crt: missing, and this PKI is not new"):
        generate(load(data), out)
    assert snapshot(out) == before  # no new CA key was made


def test_ca_key_not_matching_its_certificate_is_an_error(fresh, tmp_path):
    data, out = fresh
    other = tmp_path / "other"
    generate(load(data), other)
    shutil.copy(other / "local/pki/etcd/ca.key", out / "local/pki/etcd/ca.key")
    with pytest.raises(PKIError, match=r"etcd/ca\.key: does not match ca\.crt"):
        generate(load(data), out)


def test_ca_keys_off_hosts(fresh):
    data, out = fresh
    data["pki"]["ca_keys_on_hosts"] = False
    result = generate(load(data), out)
    for host in ("cp-a", "cp-b", "cp-c"):
        pki = out / host / PKI.lstrip("/")
        assert not (pki / "ca.key").exists()
        assert not (pki / "etcd/ca.key").exists()
        assert not (pki / "front-proxy-ca.key").exists()
        assert (pki / "apiserver.key").exists()  # leaves are still issued locally
        assert str(pki / "ca.key") in result.hosts[host].removed
        assert not any(f.path.endswith("ca.key") for f in result.hosts[host].files)
    assert (out / "local/pki/ca.key").exists()  # the operator keeps them


def test_without_the_ca_key_valid_leaves_are_kept_and_missing_ones_refused(fresh, tmp_path):
    data, out = fresh
    data["pki"]["ca_keys_on_hosts"] = False
    generate(load(data), out)
    vault = tmp_path / "vault"
    vault.mkdir()
    shutil.move(out / "local/pki/ca.key", vault / "ca.key")  # the CA key goes offline
    assert not generate(load(data), out).changed
    (out / "node-a1/var/lib/kubelet/pki/kubelet.crt").unlink()
    with pytest.raises(PKIError, match=r"kubelet\.crt: must be issued \(new\) but the "
                                       r"kubernetes-ca key is not in local/pki"):
        generate(load(data), out)


def test_removed_host_loses_its_directory(fresh):
    data, out = fresh
    data["hosts"] = [h for h in data["hosts"] if h["name"] != "node-c1"]
    (out / "not-ours").mkdir()
    result = generate(load(data), out)
    assert not (out / "node-c1").exists()
    assert str(out / "node-c1") in result.local.removed
    assert (out / "not-ours").exists()  # only directories we wrote are removed


def test_rsa_by_default_and_key_type_change_reissues(fresh):
    data, out = fresh
    data["pki"]["key_type"] = "rsa"
    data["hosts"] = [h for h in data["hosts"]
                     if h["name"] in ("cp-a", "cp-b", "cp-c", "node-a1")]
    result = generate(load(data), out)
    assert all("its key is not rsa" in line for line in result.hosts["node-a1"].issued)
    key = load_key((out / "node-a1/var/lib/kubelet/pki/kubelet.key").read_bytes())
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    # RSA leaves keep the document's usages (only ECDSA ones drop keyEncipherment)
    assert facts(cert(out / "node-a1/var/lib/kubelet/pki/kubelet.crt")).key_usages == {
        "digital_signature", "key_encipherment"}
    assert not generate(load(data), out).changed


def test_konnectivity_mode_adds_its_ca_and_leaves_and_leaving_it_removes_them(fresh):
    data, out = fresh
    data["cluster"]["egress"] = "konnectivity"
    result = generate(load(data), out)
    local = out / "local" / "pki"
    ca = cert(local / "konnectivity" / "ca.crt")
    assert not (out / "cp-a" / PKI.lstrip("/") / "konnectivity" / "ca.key").exists()
    for host in ("cp-a", "cp-b", "cp-c"):
        server = cert(out / host / PKI.lstrip("/") / "konnectivity" / "server.crt")
        sans = facts(server)
        assert sans.cn == "konnectivity-server" and sans.ext_key_usages == {"server_auth"}
        assert {"api-a.mz-example.internal", "api-c.mz-example.internal", host} <= sans.dns
        assert signed_by(server, ca)
        assert not signed_by(server, cert(local / "ca.crt"))
        assert result.hosts[host].issued == ("konnectivity-server: new",)
    for node in ("node-a1", "node-b1", "node-c1"):
        agent = cert(out / node / PKI.lstrip("/") / "konnectivity" / "agent.crt")
        assert facts(agent).cn == f"konnectivity-agent:{node}"
        assert facts(agent).ext_key_usages == {"client_auth"}
        assert (out / node / PKI.lstrip("/") / "konnectivity" / "ca.crt").exists()
    data["cluster"]["egress"] = "ssh-tunnel"
    generate(load(data), out)
    left = [p for p in out.rglob("*") if "konnectivity" in p.parts and p.is_file()
            and p.parts[len(out.parts)] != "local"]
    assert left == []
    assert (local / "konnectivity" / "ca.crt").exists()  # the CA stays, as every CA does
