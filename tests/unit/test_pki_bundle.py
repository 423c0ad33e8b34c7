"""The PKI bundle (bootstrap/pki/bundle.py): a PKI directory to one value and back, whole
and with its modes; another cluster's PKI, a foreign file or an altered bundle is refused
with one line and nothing written."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.control_plane import encryption
from bootstrap.egress import tunnel_keys
from bootstrap.errors import ConfigError
from bootstrap.pki import bundle, generate
from tests.unit.pki_support import ROOT, example_data, load, snapshot


def make_pki(where: Path) -> Path:
    """A PKI directory as `apply` leaves it: PKI, encryption key, egress tunnel keys."""
    data = example_data("ecdsa")
    data["cluster"]["egress"] = "ssh-tunnel"
    data["ssh"]["authorized_keys"] = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ3aDIzNUlrOXBGVE1SekR2cDJ6SnFaRkhtc1lpZTNz ops"]
    inventory = load(data)
    generate(inventory, where, workers=1)
    encryption.ensure(where)
    tunnel_keys.ensure(where, inventory)
    return where


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("a") / "pki")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("b") / "pki")


def modes(root: Path, dirs: bool = False) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in root.rglob("*")
            if p.is_dir() == dirs}


def contents(root: Path) -> dict[str, tuple[str, int]]:
    return {k: v[:2] for k, v in snapshot(root).items()}


def test_a_directory_round_trips_with_its_modes(pki: Path, tmp_path: Path) -> None:
    exported = bundle.export_dir(pki)
    assert json.loads(json.dumps(exported)) == exported  # JSON-able as it is
    files = exported["files"]
    assert "local/encryption-keys.yaml" in files
    assert any(k.startswith("local/egress-tunnel/") and k.endswith(".key") for k in files)
    assert files["local/pki/ca.key"]["mode"] == 0o600
    assert files["local/pki/ca.crt"]["mode"] == 0o644
    copy = tmp_path / "copy"
    assert bundle.import_dir(exported, copy) == len(files)
    assert contents(copy) == contents(pki)
    assert modes(copy) == modes(pki)  # 0600 keys, 0644 certificates, as written
    private = {rel: mode for rel, mode in modes(copy, dirs=True).items()
               if {"pki", "local"} & set(rel.split("/"))}
    assert private and set(private.values()) == {0o700}, private
    assert stat.S_IMODE(copy.stat().st_mode) == 0o700
    assert bundle.export_dir(copy) == exported
    assert bundle.import_dir(exported, copy) == 0  # nothing differs: nothing written


def test_export_is_the_same_value_every_time(pki: Path) -> None:
    """State compares bundles: an unchanged PKI must give an identical one."""
    first = json.dumps(bundle.export_dir(pki), sort_keys=True)
    assert json.dumps(bundle.export_dir(pki), sort_keys=True) == first


def test_another_clusters_directory_is_refused_naming_both(pki: Path, other: Path) -> None:
    before = snapshot(other)
    exported = bundle.export_dir(pki)
    with pytest.raises(ConfigError) as err:
        bundle.import_dir(exported, other, source="a.json")
    message = str(err.value)
    assert "\n" not in message
    assert bundle.ca_fingerprint(exported) in message
    assert bundle.ca_fingerprint(bundle.export_dir(other)) in message
    assert bundle.ca_fingerprint(exported) != bundle.ca_fingerprint(bundle.export_dir(other))
    assert snapshot(other) == before
    assert not bundle.same_cluster(exported, bundle.export_dir(other))
    assert bundle.same_cluster(exported, bundle.export_dir(pki))


def test_a_directory_that_is_not_a_pki_is_refused(pki: Path, tmp_path: Path) -> None:
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "todo.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a PKI directory"):
        bundle.import_dir(bundle.export_dir(pki), stranger)
    assert sorted(os.listdir(stranger)) == ["todo.txt"]


def altered(pki: Path, change) -> dict:  # type: ignore[no-untyped-def]
    exported = bundle.export_dir(pki)
    change(exported)
    return exported


@pytest.mark.parametrize("change, words", [
    (lambda b: b.update(format="something-else"), "not a PKI bundle"),
    (lambda b: b.update(version=2), "version 2"),
    (lambda b: b["files"].update({"../outside": b["files"]["local/pki/ca.crt"]}),
     "not a relative path"),
    (lambda b: b["files"].update({"/etc/passwd": b["files"]["local/pki/ca.crt"]}),
     "not a relative path"),
    (lambda b: b["files"]["local/pki/ca.crt"].update(content="%%%"), "not base64"),
    (lambda b: b["files"]["local/pki/ca.crt"].update(mode=0o4755), "mode"),
    (lambda b: b["files"].pop("local/pki/ca.crt"), "no local/pki/ca.crt"),
])
def test_an_altered_bundle_is_refused_before_anything_is_written(
        pki: Path, tmp_path: Path, change, words: str) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "new"
    with pytest.raises(ConfigError, match=words):
        bundle.import_dir(altered(pki, change), target)
    assert not target.exists()


def test_key_material_is_written_0600_whatever_the_bundle_says(pki: Path,
                                                                 tmp_path: Path) -> None:
    def widen(b: dict) -> None:
        for rel, entry in b["files"].items():
            if rel.endswith((".key", ".conf", "encryption-keys.yaml")):
                entry["mode"] = 0o644

    bundle.import_dir(altered(pki, widen), tmp_path / "copy")
    assert modes(tmp_path / "copy")["local/pki/ca.key"] == 0o600
    assert modes(tmp_path / "copy")["local/admin.conf"] == 0o600
    assert modes(tmp_path / "copy")["local/encryption-keys.yaml"] == 0o600


def test_export_refuses_a_link_inside(pki: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    bundle.import_dir(bundle.export_dir(pki), copy)
    (copy / "local" / "stray.crt").symlink_to("/etc/hostname")
    with pytest.raises(ConfigError, match="symbolic link"):
        bundle.export_dir(copy)


def test_export_refuses_a_directory_that_is_not_a_pki(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    with pytest.raises(ConfigError, match="not a PKI directory"):
        bundle.export_dir(tmp_path)


# --------------------------------------------------------------------------- the command


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootstrap", "pki-bundle", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def assert_refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    for word in words:
        assert word in proc.stderr


def test_the_command_exports_0600_and_imports(pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle.json"
    proc = cli("export", str(pki), str(out))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    proc = cli("import", str(out), str(tmp_path / "copy"))
    assert proc.returncode == 0, proc.stderr
    assert contents(tmp_path / "copy") == contents(pki)


def test_the_command_refuses_bad_input_with_one_line(pki: Path, other: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "bundle.json"
    assert cli("export", str(pki), str(out)).returncode == 0
    before = snapshot(other)
    assert_refused(cli("import", str(out), str(other)), "different clusters' PKIs",
                   "SHA256:")
    assert snapshot(other) == before
    target = tmp_path / "target"
    assert_refused(cli("import", str(ROOT / "examples" / "inventory.yaml"), str(target)),
                   "not a PKI bundle")
    assert_refused(cli("import", str(tmp_path / "missing.json"), str(target)),
                   "cannot be read")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"files": {"a": {"content": base64.b64encode(b"x").decode(),
                                                   "mode": 0o644}}}))
    assert_refused(cli("import", str(foreign), str(target)), "not a PKI bundle")
    assert not target.exists()
    assert_refused(cli("export", str(tmp_path / "nowhere"), str(tmp_path / "x.json")),
                   "not a directory")


# --------------------------------------------------------------------------- keys verified


def with_file(exported: dict, rel: str, content: bytes) -> dict:
    copy = json.loads(json.dumps(exported))
    copy["files"][rel] = {"content": base64.b64encode(content).decode(), "mode": 0o600}
    return copy


def file_of(root: Path, rel: str) -> bytes:
    return (root / rel).read_bytes()


@pytest.mark.parametrize("rel, words", [
    ("local/pki/ca.key", "local/pki/ca.key: does not match local/pki/ca.crt"),
    ("local/pki/etcd/ca.key", "local/pki/etcd/ca.key: does not match local/pki/etcd/ca.crt"),
    ("cp-a/etc/kubernetes/pki/apiserver.key",
     "cp-a/etc/kubernetes/pki/apiserver.key: does not match "
     "cp-a/etc/kubernetes/pki/apiserver.crt"),
    ("local/pki/sa.key", "local/pki/sa.key: does not match local/pki/sa.pub"),
    ("cp-b/etc/kubernetes/pki/sa.key", "cp-b/etc/kubernetes/pki/sa.key: does not match"),
])
def test_a_key_that_is_not_its_certificates_is_refused_over_a_working_pki(
        pki: Path, other: Path, tmp_path: Path, rel: str, words: str) -> None:
    """Another cluster's key under this cluster's certificate: refused, naming the file,
    and the working directory is left exactly as it was."""
    target = tmp_path / "working"
    bundle.import_dir(bundle.export_dir(pki), target)
    before = snapshot(target)
    mixed = with_file(bundle.export_dir(pki), rel, file_of(other, rel))
    with pytest.raises(ConfigError) as err:
        bundle.import_dir(mixed, target, source="mixed.json")
    assert str(err.value).startswith(f"mixed.json: {words}"), err.value
    assert "\n" not in str(err.value)
    assert snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["working"]  # nothing left beside it


@pytest.mark.parametrize("rel", ["cp-a/etc/kubernetes/pki/apiserver.crt",
                                 "node-a1/var/lib/kubelet/pki/kubelet.crt"])
def test_a_leaf_and_key_of_another_cluster_are_refused(pki: Path, other: Path, tmp_path: Path,
                                                       rel: str) -> None:
    """The pair matches, but another CA signed it: it does not chain to the bundle's CA."""
    key_rel = rel[:-len("crt")] + "key"
    mixed = with_file(with_file(bundle.export_dir(pki), rel, file_of(other, rel)), key_rel,
                      file_of(other, key_rel))
    with pytest.raises(ConfigError, match=rf"{rel}: not signed by the bundle's kubernetes-ca"):
        bundle.import_dir(mixed, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_hosts_ca_copy_of_another_cluster_is_refused(pki: Path, other: Path,
                                                       tmp_path: Path) -> None:
    rel = "node-a1/etc/kubernetes/pki/ca.crt"
    mixed = with_file(bundle.export_dir(pki), rel, file_of(other, rel))
    with pytest.raises(ConfigError, match="a CA certificate that is not one of the bundle's"):
        bundle.import_dir(mixed, tmp_path / "new")


def test_a_kubeconfig_with_another_clusters_credentials_is_refused(pki: Path, other: Path,
                                                                    tmp_path: Path) -> None:
    rel = "local/admin.conf"
    mixed = with_file(bundle.export_dir(pki), rel, file_of(other, rel))
    with pytest.raises(ConfigError, match=r"local/admin\.conf: not signed by the bundle's"):
        bundle.import_dir(mixed, tmp_path / "new")


def test_a_ca_key_without_its_certificate_is_refused(pki: Path, tmp_path: Path) -> None:
    mixed = with_file(bundle.export_dir(pki), "local/pki/spare.key",
                      file_of(pki, "local/pki/ca.key"))
    with pytest.raises(ConfigError, match="a key without its certificate or public half"):
        bundle.import_dir(mixed, tmp_path / "new")


def test_a_bundle_without_ca_keys_still_imports(pki: Path, tmp_path: Path) -> None:
    """CA keys kept elsewhere: certificates are checked, nothing demands the keys."""
    exported = bundle.export_dir(pki)
    for rel in [r for r in exported["files"] if r.endswith("ca.key")]:
        del exported["files"][rel]
    assert bundle.import_dir(exported, tmp_path / "new") == len(exported["files"])
    assert not (tmp_path / "new/local/pki/ca.key").exists()


# --------------------------------------------------------------------------- all or nothing


def test_a_same_cluster_bundle_updates_a_working_pki_and_keeps_other_files(
        pki: Path, tmp_path: Path) -> None:
    target = tmp_path / "working"
    bundle.import_dir(bundle.export_dir(pki), target)
    (target / "local/notes.txt").write_text("mine")
    rel = "node-a1/var/lib/kubelet/pki/kubelet.crt"
    (target / rel).write_bytes(b"stale")
    assert bundle.import_dir(bundle.export_dir(pki), target) == 1
    assert file_of(target, rel) == file_of(pki, rel)
    assert (target / "local/notes.txt").read_text() == "mine"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert sorted(os.listdir(tmp_path)) == ["working"]


def test_a_failure_while_writing_leaves_the_target_exactly_as_it_was(
        pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "working"
    bundle.import_dir(bundle.export_dir(pki), target)
    (target / "node-a1/var/lib/kubelet/pki/kubelet.crt").write_bytes(b"stale")
    before = snapshot(target)
    from bootstrap.pki import files as pki_files
    real_write, calls = pki_files.Tree.write, []

    def failing_write(self, rel, content, mode, durable=False):  # type: ignore[no-untyped-def]
        calls.append(rel)
        if len(calls) == 40:
            raise OSError(28, "No space left on device")
        return real_write(self, rel, content, mode, durable)

    monkeypatch.setattr(pki_files.Tree, "write", failing_write)
    with pytest.raises(ConfigError, match="No space left on device.*nothing was changed"):
        bundle.import_dir(bundle.export_dir(pki), target)
    assert len(calls) == 40
    assert snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["working"]


def test_a_bundle_with_another_service_account_key_is_refused_over_a_working_pki(
        pki: Path, tmp_path: Path) -> None:
    """Same CAs, another sa.key (say, a PKI whose sa.key was re-made): importing it would
    end every service-account token of the running cluster."""
    target = tmp_path / "working"
    bundle.import_dir(bundle.export_dir(pki), target)
    before = snapshot(target)
    other_key = generate_key_pair()
    exported = with_file(with_file(bundle.export_dir(pki), "local/pki/sa.key", other_key[0]),
                         "local/pki/sa.pub", other_key[1])
    with pytest.raises(ConfigError) as err:
        bundle.import_dir(exported, target, source="b.json")
    assert str(err.value).startswith(f"{target}/local/pki/sa.key: b.json holds a different key")
    assert snapshot(target) == before
    assert bundle.import_dir(exported, tmp_path / "elsewhere") > 0  # a new directory is fine


def test_a_bundle_that_would_drop_an_encryption_key_is_refused(pki: Path,
                                                              tmp_path: Path) -> None:
    target = tmp_path / "working"
    bundle.import_dir(bundle.export_dir(pki), target)
    before = snapshot(target)
    fresh = tmp_path / "fresh"
    encryption.ensure(fresh)
    exported = with_file(bundle.export_dir(pki), "local/encryption-keys.yaml",
                         file_of(fresh, "local/encryption-keys.yaml"))
    with pytest.raises(ConfigError, match="encryption keys without one of the directory's"):
        bundle.import_dir(exported, target)
    assert snapshot(target) == before


def generate_key_pair() -> tuple[bytes, bytes]:
    from bootstrap.pki import certs
    key = certs.new_key(certs.KeySpec("ecdsa", 2048))
    return certs.key_pem(key), certs.public_pem(key)


# --------------------------------------------------------------------------- exports


def a_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "stacks").mkdir()
    return checkout


def test_an_export_into_a_git_work_tree_is_refused_unless_allowed(pki: Path,
                                                                  tmp_path: Path) -> None:
    target = a_checkout(tmp_path) / "stacks" / "prod.bundle"
    assert_refused(cli("export", str(pki), str(target)), f"inside the git work tree "
                   f"{tmp_path / 'checkout'}", "e.g. ~/mzk-pki/prod.bundle", "--allow-in-tree")
    assert not target.exists()
    proc = cli("export", str(pki), str(target), "--allow-in-tree")
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_the_checkout_itself_is_a_work_tree() -> None:
    assert bundle.work_tree_of(ROOT / "stacks" / "x.bundle") == ROOT
    assert bundle.work_tree_of(Path("/") / "x.bundle") is None


def mzk(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "bin" / "mzk"), "pki", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_bin_mzk_pki_export_takes_paths_from_where_it_is_run(pki: Path,
                                                             tmp_path: Path) -> None:
    """Run from outside the checkout with relative paths: the bundle lands there, not in
    the checkout (the script itself runs from the checkout)."""
    shutil.copytree(pki, tmp_path / "pki", symlinks=True)
    proc = mzk(tmp_path, "export", "pki", "out.bundle")
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "out.bundle").stat().st_mode) == 0o600
    assert not (ROOT / "out.bundle").exists()
    proc = mzk(tmp_path, "import", "out.bundle", "copy")
    assert proc.returncode == 0, proc.stderr
    assert contents(tmp_path / "copy") == contents(pki)
    proc = mzk(ROOT, "export", str(pki), "in-the-checkout.bundle")
    assert proc.returncode == 2 and "inside the git work tree" in proc.stderr
    assert not (ROOT / "in-the-checkout.bundle").exists()


def test_the_stack_export_refuses_a_checkout_before_reading_the_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from components.cluster_bootstrap import main
    target = a_checkout(tmp_path) / "prod.bundle"
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"deployment": {"resources": []}}'))
    assert main([str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inside the git work tree" in err
    assert not target.exists()
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"deployment": {"resources": []}}'))
    assert main([str(target), "--allow-in-tree"]) == 2  # allowed: now the empty state speaks
    assert "holds 0" in capsys.readouterr().err
