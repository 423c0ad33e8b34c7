"""The PKI table against the document, and the table's own rules.

The seed (shared/seeds/004_*.txt) keeps each table row on one line with the cells run
together ("kube-etcdetcd-caserver, client<hostname>, ..."). Each test rebuilds those lines
from our table and finds them in the document, and counts the document's rows, so that a
row we lack or a cell we changed fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.pki import table
from bootstrap.pki.table import (
    CA_BY_NAME,
    CAS,
    DESIGN,
    DOCUMENT,
    FILE_USES,
    KUBECONFIGS,
    LEAF_BY_NAME,
    LEAVES,
    PKI_DIR,
    flags_for,
)

SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"


def _seed_lines() -> list[str] | None:
    candidates = sorted(SEEDS.glob("004_*.txt"))
    if not candidates:  # the seeds live beside the repository, as shared/ does in CI
        return None
    return [line.strip() for line in candidates[0].read_text().splitlines()]


_LINES = _seed_lines()


def seed() -> list[str]:
    """The document's lines; a test that compares against it is skipped, with the reason,
    where the seeds are not beside the repository (the table's own rules still run)."""
    if _LINES is None:
        pytest.skip(f"seed 004 not found under {SEEDS}: put shared/ beside the repository "
                    "to compare the table with the document")
    return _LINES


def _rows_after(header: str) -> list[str]:
    """The table rows that follow the line ending with `header`, up to the next blank line
    after them."""
    LINES = seed()  # noqa: N806 - the document's lines
    start = next(i for i, line in enumerate(LINES) if line.endswith(header)) + 1
    while not LINES[start]:
        start += 1
    rows = []
    for line in LINES[start:]:
        if not line or line[:3] == "1. ":  # a blank line or a numbered list ends a table
            break
        rows.append(line)
    return rows


# How the document writes our SAN hooks and templated CNs.
SAN_TEXT = {
    table.host_and_loopback: "<hostname>, <Host_IP>, localhost, 127.0.0.1",
    table.apiserver_sans: "<hostname>, <Host_IP>, <advertise_IP>, [1]",
    table.no_sans: "",
}
CN_TEXT = {"system:node:{node}": "system:node:<nodeName> (note를 보자)"}
# The document's paths table names the front-proxy CA "front-proxy-ca" where its CA table
# gives the CN "kubernetes-front-proxy-ca". The CA table defines the CN; we follow it.
PATHS_TABLE_CA_NAME = {"kubernetes-front-proxy-ca": "front-proxy-ca"}


def _rel(path: str) -> str:
    return path.removeprefix(PKI_DIR + "/")


def test_required_cas_match_the_document():
    rows = _rows_after("경로기본 CN설명")
    document = [ca for ca in CAS if ca.source == DOCUMENT]
    assert len(rows) == len(document) == 3
    for ca, row in zip(document, rows, strict=True):
        assert row.startswith(f"{ca.base}.crt,key{ca.name}"), row
    listed = _rows_after("다음은 이전 표에 나온 CA 키와 인증서 파일을 보여준다.")
    assert listed == [p for ca in document for p in (ca.cert_path, ca.key_path)]


def test_all_certificates_table_row_by_row():
    rows = _rows_after("기본 CN부모 CAO (주체에서)종류호스트 (SAN)")
    ours = [leaf for leaf in LEAVES if leaf.source == DOCUMENT]
    built = [leaf.cn + leaf.ca + ",".join(leaf.orgs) + ", ".join(leaf.kinds) +
             SAN_TEXT[leaf.sans] for leaf in ours]
    assert built == rows


def test_kind_table():
    rows = _rows_after("종류키 사용")
    assert rows == [
        "serverdigital signature, key encipherment, server auth",
        "clientdigital signature, key encipherment, client auth",
    ]
    for kind, (usages, eku) in table.KIND_USAGES.items():
        text = ", ".join(u.replace("_", " ") for u in usages) + ", " + eku.replace("_", " ")
        assert f"{kind}{text}" in rows


def test_certificate_file_paths_table_row_by_row():
    rows = _rows_after("기본 CN권고되는 키 파일 경로권고하는 인증서 파일 경로명령어키 파라미터인증서 파라미터")  # noqa: E501
    built = []
    for use in FILE_USES:
        if use.source != DOCUMENT or use.file == "sa":
            continue
        if use.file in CA_BY_NAME:
            ca = CA_BY_NAME[use.file]
            cn, key, crt = PATHS_TABLE_CA_NAME.get(ca.name, ca.name), ca.key_path, ca.cert_path
        else:
            leaf = LEAF_BY_NAME[use.file]
            cn, key, crt = leaf.cn, leaf.key_path, leaf.cert_path
        if use.command == "etcdctl" and use.file in CA_BY_NAME:
            key = ""  # the document gives etcdctl only the CA certificate
        built.append(cn + _rel(key) + _rel(crt) + use.command + ", ".join(use.key_flags)
                     + ", ".join(use.cert_flags))
    assert built == rows


def test_service_account_table():
    rows = _rows_after("개인키 경로공개 키 경로명령어파라미터")
    built = []
    for use in FILE_USES:
        if use.file == "sa" and use.source == DOCUMENT:
            path = "sa.key" if use.key_flags else "sa.pub"
            built.append(path + use.command + ", ".join(use.key_flags + use.cert_flags))
    assert built == rows


def test_full_path_list_is_what_a_control_plane_host_holds():
    listed = _rows_after("다음은 키와 인증서를 모두 생성할 때에 제공해야 하는 이전 표에 있는 파일의 경로를 보여준다.")  # noqa: E501
    ours = {p for ca in CAS if ca.source == DOCUMENT for p in (ca.cert_path, ca.key_path)}
    ours |= {p for leaf in LEAVES if leaf.source == DOCUMENT
             for p in (leaf.cert_path, leaf.key_path)}
    ours |= {table.SA_KEY, table.SA_PUB}
    assert sorted(listed) == sorted(ours)


def test_kubeconfig_table_row_by_row():
    rows = _rows_after("파일명자격증명 이름기본 CNO (주체에서)")
    built = [kc.file + kc.credential + CN_TEXT.get(kc.cn, kc.cn) + ",".join(kc.orgs)
             for kc in KUBECONFIGS]
    assert built == rows
    uses = _rows_after("파일명명령어설명")
    for kc, row in zip(KUBECONFIGS, uses, strict=True):
        assert row.startswith(kc.file + kc.command), row
    paths = _rows_after("다음의 파일은 이전 표에 나열된 파일의 전체 경로를 보여준다.")
    assert paths == [kc.path for kc in KUBECONFIGS]


# --------------------------------------------------------------------------- the table's rules


def test_cas_come_before_leaves_and_every_reference_resolves():
    names = [ca.name for ca in CAS]
    assert len(set(names)) == len(names)
    for leaf in LEAVES:
        assert leaf.ca in CA_BY_NAME, leaf.name
    assert table.KUBECONFIG_CA in CA_BY_NAME
    for use in FILE_USES:
        assert use.file == "sa" or use.file in CA_BY_NAME or use.file in LEAF_BY_NAME, use
        assert use.key_flags or use.cert_flags


def test_every_path_is_unique():
    paths = [p for ca in CAS for p in (ca.cert_path, ca.key_path)]
    paths += [p for leaf in LEAVES for p in (leaf.cert_path, leaf.key_path)]
    paths += [kc.path for kc in KUBECONFIGS] + [table.SA_KEY, table.SA_PUB]
    assert len(paths) == len(set(paths))
    assert all(p.startswith("/") for p in paths)


def test_every_kind_is_known_and_design_rows_say_why():
    for ca in CAS:
        assert ca.source in (DOCUMENT, DESIGN)
        assert ca.source == DOCUMENT or (ca.why and not ca.key_on_hosts)
    for leaf in LEAVES:
        assert leaf.kinds and set(leaf.kinds) <= set(table.KIND_USAGES), leaf.name
        assert leaf.source in (DOCUMENT, DESIGN)
        assert leaf.source == DOCUMENT or leaf.why
    for use in FILE_USES:
        assert use.source == DOCUMENT or use.why


def test_no_flag_points_at_two_files():
    for command in {use.command for use in FILE_USES}:
        seen: dict[str, str] = {}
        for use in FILE_USES:
            if use.command != command:
                continue
            for flag in use.key_flags + use.cert_flags:
                assert flag not in seen, f"{command} {flag}"
                seen[flag] = use.file


def test_flags_for_renders_paths():
    etcd = flags_for("etcd")
    assert etcd == {
        "--trusted-ca-file": "/etc/kubernetes/pki/etcd/ca.crt",
        "--peer-trusted-ca-file": "/etc/kubernetes/pki/etcd/ca.crt",
        "--key-file": "/etc/kubernetes/pki/etcd/server.key",
        "--cert-file": "/etc/kubernetes/pki/etcd/server.crt",
        "--peer-key-file": "/etc/kubernetes/pki/etcd/peer.key",
        "--peer-cert-file": "/etc/kubernetes/pki/etcd/peer.crt",
    }
    api = flags_for("kube-apiserver")
    assert api["--kubelet-certificate-authority"] == "/etc/kubernetes/pki/ca.crt"
    assert api["--etcd-certfile"] == "/etc/kubernetes/pki/apiserver-etcd-client.crt"
    assert api["--service-account-key-file"] == "/etc/kubernetes/pki/sa.pub"
    cm = flags_for("kube-controller-manager")
    assert cm["--cluster-signing-key-file"] == "/etc/kubernetes/pki/ca.key"
    assert cm["--service-account-private-key-file"] == "/etc/kubernetes/pki/sa.key"


def test_flags_without_ca_keys_on_hosts_name_no_ca_key():
    for command in {use.command for use in FILE_USES}:
        paths = flags_for(command, ca_keys_on_hosts=False).values()
        assert not {ca.key_path for ca in CAS} & set(paths), command
    cm = flags_for("kube-controller-manager", ca_keys_on_hosts=False)
    assert "--cluster-signing-key-file" not in cm
    assert "--cluster-signing-cert-file" not in cm
    assert cm["--client-ca-file"] == "/etc/kubernetes/pki/ca.crt"
