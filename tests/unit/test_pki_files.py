"""The PKI writer writes only what it owns, only where it was asked.

Policies: nothing under DIR is reached through a symbolic link (a planted link is refused
with one line and nothing outside DIR changes, not even an mtime or a mode); nothing the
PKI did not write is removed; a directory that is not a PKI directory is refused, not
cleaned; temporary files cannot be pre-planted; directories get their modes back.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pki_support import example_data, load

from bootstrap.cli import main
from bootstrap.errors import ConfigError, MultizoneError, PKIError
from bootstrap.pki import files, generate
from bootstrap.pki.issue import _write

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "inventory.yaml"
PKI = "etc/kubernetes/pki"
SENTINEL = b"operator's own file\n"


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """relative path -> (sha256 or 'dir' or 'link:<target>', mode, mtime_ns) of every entry
    under root and of root itself; links are recorded, never followed."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for name in [*dirs, *names, *([""] if dirpath == str(root) else [])]:
            p = Path(dirpath, name) if name else Path(dirpath)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "link:" + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                what = "dir"
            else:
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (what, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


@pytest.fixture
def fresh(tmp_path):
    """A generated PKI at tmp/a/pki, and a directory outside it holding an operator's files
    (tmp/x: what `../../x` names from the PKI directory)."""
    data = example_data()
    out = tmp_path / "a" / "pki"
    generate(load(data), out, workers=1)
    outside = tmp_path / "x"
    (outside / "sub").mkdir(parents=True)
    (outside / "notes.txt").write_bytes(SENTINEL)
    (outside / "sub" / "ca.key").write_bytes(SENTINEL)
    (outside / "etc" / "kubernetes" / "pki").mkdir(parents=True)  # shaped like a host dir
    (outside / "etc" / "kubernetes" / "pki" / "ca.crt").write_bytes(SENTINEL)
    os.chmod(outside / "notes.txt", 0o640)
    return data, out, outside


def _link_dir(path: Path, outside: Path) -> Path:
    shutil.rmtree(path)
    path.symlink_to(outside, target_is_directory=True)
    return path


def _plant_host_dir(out: Path, outside: Path) -> Path:
    return _link_dir(out / "cp-a", outside)


def _plant_subdir(out: Path, outside: Path) -> Path:
    return _link_dir(out / "cp-a" / PKI, outside)


def _plant_local(out: Path, outside: Path) -> Path:
    return _link_dir(out / "local", outside)


def _plant_local_pki(out: Path, outside: Path) -> Path:
    return _link_dir(out / "local" / "pki", outside)


def _plant_file_with_same_bytes(out: Path, outside: Path) -> Path:
    """The file's twin outside, with another mode: following the link would chmod it."""
    path = out / "cp-a" / PKI / "apiserver.crt"
    shutil.copy(path, outside / "apiserver.crt")
    os.chmod(outside / "apiserver.crt", 0o600)
    path.unlink()
    path.symlink_to(outside / "apiserver.crt")
    return path


def _plant_key_file(out: Path, outside: Path) -> Path:
    path = out / "node-b1" / "var/lib/kubelet/pki/kubelet.key"
    path.unlink()
    path.symlink_to(outside / "notes.txt")
    return path


def _plant_departed_host(out: Path, outside: Path) -> Path:
    """A host the manifest lists (so a run would remove it) that is now a link."""
    manifest = out / "local" / "manifest.json"
    hosts = json.loads(manifest.read_text())["hosts"]
    manifest.write_text(json.dumps({"hosts": [*hosts, "gone"]}))
    (out / "gone").symlink_to(outside, target_is_directory=True)
    return out / "gone"


def _plant_manifest_dotdot(out: Path, outside: Path) -> Path:
    manifest = out / "local" / "manifest.json"
    hosts = json.loads(manifest.read_text())["hosts"]
    manifest.write_text(json.dumps({"hosts": [*hosts, "../../x"]}))
    return manifest


PLANTS: dict[str, Callable[[Path, Path], Path]] = {
    "host directory": _plant_host_dir,
    "subdirectory": _plant_subdir,
    "local/": _plant_local,
    "local/pki": _plant_local_pki,
    "file with the same bytes": _plant_file_with_same_bytes,
    "key file": _plant_key_file,
    "departed host": _plant_departed_host,
    "manifest naming ../../x": _plant_manifest_dotdot,
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("plant", PLANTS.values(), ids=PLANTS.keys())
def test_a_planted_link_is_refused_and_nothing_outside_is_touched(fresh, plant, workers):
    data, out, outside = fresh
    planted = plant(out, outside)
    before = snapshot(outside)
    with pytest.raises(MultizoneError) as caught:
        generate(load(data), out, workers=workers)
    message = str(caught.value)
    assert "\n" not in message
    assert str(planted) in message
    assert snapshot(outside) == before
    assert (outside / "notes.txt").read_bytes() == SENTINEL


def test_a_planted_link_is_reported_by_the_command_in_one_line(fresh, capsys):
    data, out, outside = fresh
    planted = _plant_subdir(out, outside)
    before = snapshot(outside)
    inv = out.parent / "inventory.yaml"
    inv.write_text(yaml.safe_dump(data))
    assert main(["pki", str(inv), "--out", str(out), "--quiet", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {planted}: is a symbolic link; the PKI never follows links " \
                  "inside its directory. Remove the link (put a directory there if you " \
                  "need one) and run again\n"
    assert snapshot(outside) == before


def test_after_the_link_is_removed_the_pki_converges(fresh):
    data, out, outside = fresh
    planted = _plant_subdir(out, outside)
    with pytest.raises(PKIError):
        generate(load(data), out, workers=1)
    planted.unlink()
    result = generate(load(data), out, workers=1)
    assert result.hosts["cp-a"].issued  # the directory's certificates came back
    assert not generate(load(data), out, workers=1).changed


def test_a_fifo_where_a_file_belongs_is_refused_not_waited_on(fresh):
    data, out, _outside = fresh
    path = out / "cp-b" / PKI / "front-proxy-client.key"
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(PKIError, match=r"front-proxy-client\.key: is not a regular file"):
        generate(load(data), out, workers=1)


def test_a_hard_link_is_never_changed_in_place(fresh):
    data, out, outside = fresh
    path = out / "cp-a" / PKI / "apiserver.crt"
    backup = outside / "apiserver.crt.bak"
    os.link(path, backup)
    os.chmod(path, 0o600)  # both names: one inode
    content = backup.read_bytes()
    result = generate(load(data), out, workers=1)
    assert str(path) in result.hosts["cp-a"].written
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # not chmod-ed through the link
    assert backup.read_bytes() == content and path.read_bytes() == content
    assert path.stat().st_nlink == 1


# --------------------------------------------------------------------------- not ours


def test_an_unrelated_directory_is_refused_and_left_intact(tmp_path):
    out = tmp_path / "home"
    (out / "projects").mkdir(parents=True)
    (out / "notes.txt").write_bytes(SENTINEL)
    (out / "projects" / "cp-a").write_bytes(SENTINEL)
    os.chmod(out, 0o755)  # noqa: S103 - an ordinary home-like directory
    before = snapshot(out)
    with pytest.raises(ConfigError, match=r"home: not empty and not a PKI directory .*"
                                          r"Nothing was changed"):
        generate(load(example_data()), out, workers=1)
    assert snapshot(out) == before


def test_a_directory_with_local_but_no_manifest_is_refused(tmp_path):
    out = tmp_path / "pki"
    (out / "local").mkdir(parents=True)
    (out / "local" / "notes.txt").write_bytes(SENTINEL)
    os.chmod(out / "local", 0o755)  # noqa: S103 - not ours: we must not fix it
    before = snapshot(out)
    with pytest.raises(ConfigError, match="not a PKI directory"):
        generate(load(example_data()), out, workers=1)
    assert snapshot(out) == before


@pytest.mark.parametrize("manifest", [b"not json", b"[]", b'{"hosts": "cp-a"}',
                                      b'{"hosts": ["/etc"]}', b'{"hosts": [".."]}',
                                      b'{"hosts": ["local"]}', b'{"hosts": ["a/b"]}',
                                      b'{"hosts": [5]}', b'{"hosts": ["Cp-A"]}'])
def test_a_manifest_that_is_not_ours_is_refused_before_anything_changes(fresh, manifest):
    data, out, _outside = fresh
    (out / "local" / "manifest.json").write_bytes(manifest)
    before = snapshot(out.parent)
    with pytest.raises(PKIError, match=r"manifest\.json: .*Nothing was changed") as caught:
        generate(load(data), out, workers=1)
    assert "\n" not in str(caught.value)
    assert snapshot(out.parent) == before


def test_files_the_pki_did_not_write_stay_in_a_host_directory(fresh):
    data, out, _outside = fresh
    mine = [out / "cp-a" / "etc/kubernetes/notes.txt", out / "cp-a" / PKI / "extra.pem",
            out / "cp-a" / "README", out / "node-a1" / "var/lib/kubelet/config.yaml"]
    for path in mine:
        path.write_bytes(SENTINEL)
    stray = out / "node-a1" / PKI / "apiserver.key"  # a name the table uses, not for a node
    shutil.copy(out / "cp-a" / PKI / "apiserver.key", stray)
    result = generate(load(data), out, workers=1)
    assert result.hosts["node-a1"].removed == (str(stray),)
    assert not result.hosts["cp-a"].removed
    assert all(p.read_bytes() == SENTINEL for p in mine)


def test_a_departed_host_loses_only_the_pki_files(fresh):
    data, out, _outside = fresh
    mine = out / "node-c1" / "etc/kubernetes/my-notes.txt"
    mine.write_bytes(SENTINEL)
    data["hosts"] = [h for h in data["hosts"] if h["name"] != "node-c1"]
    result = generate(load(data), out, workers=1)
    left = sorted(str(p.relative_to(out)) for p in (out / "node-c1").rglob("*"))
    assert left == ["node-c1/etc", "node-c1/etc/kubernetes",
                    "node-c1/etc/kubernetes/my-notes.txt"]
    assert mine.read_bytes() == SENTINEL
    assert str(out / "node-c1/var/lib/kubelet/pki/kubelet.key") in result.local.removed
    assert any("node-c1: the host left the inventory" in w for w in result.warnings)
    assert json.loads((out / "local/manifest.json").read_text())["hosts"] == [
        "cp-a", "cp-b", "cp-c", "node-a1", "node-b1"]


def test_a_crashed_runs_temporary_files_are_removed_and_others_are_not(fresh):
    data, out, _outside = fresh
    ours = out / "cp-b" / PKI / files.temp_name("apiserver.key")
    ours.write_bytes(b"half a key")
    theirs = [out / "cp-b" / PKI / ".apiserver.key.swp",
              out / "cp-b" / PKI / ".notes.0123456789abcdef.tmp"]
    for path in theirs:
        path.write_bytes(SENTINEL)
    result = generate(load(data), out, workers=1)
    assert result.hosts["cp-b"].removed == (str(ours),)
    assert not ours.exists()
    assert all(p.read_bytes() == SENTINEL for p in theirs)


# --------------------------------------------------------------------------- modes, temp files


def test_existing_directories_get_their_modes_back(fresh):
    data, out, _outside = fresh
    private = [out, out / "local", out / "local/pki", out / "local/pki/etcd",
               out / "cp-a" / PKI, out / "cp-a" / PKI / "etcd",
               out / "node-a1/var/lib/kubelet/pki"]
    public = [out / "cp-a", out / "cp-a/etc", out / "node-a1/var/lib"]
    for path in private + public:
        os.chmod(path, 0o777)  # noqa: S103 - the wide mode the run must fix
    result = generate(load(data), out, workers=1)
    assert not result.changed  # no file needed anything
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in private} == {
        str(p): 0o700 for p in private}
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in public} == {
        str(p): 0o755 for p in public}


def test_a_new_output_directory_is_private(tmp_path):
    out = tmp_path / "new" / "pki"
    generate(load(example_data()), out, workers=1)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_a_link_at_the_old_predictable_temp_name_is_not_written_through(fresh):
    """The writer once wrote `.<name>.tmp<pid>` with O_CREAT|O_TRUNC, following a link
    planted there. Now temp names are random and created with O_EXCL|O_NOFOLLOW."""
    data, out, outside = fresh
    target = out / "cp-a" / PKI / "apiserver.crt"
    target.unlink()  # so this run writes it
    planted = target.parent / f".apiserver.crt.tmp{os.getpid()}"
    planted.symlink_to(outside / "notes.txt")
    before = snapshot(outside)
    result = generate(load(data), out, workers=1)  # in this process: the pid matches
    assert str(target) in result.hosts["cp-a"].written
    assert snapshot(outside) == before
    assert not target.is_symlink() and b"CERTIFICATE" in target.read_bytes()


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_file_planted_at_the_temp_name_is_neither_followed_nor_overwritten(
        tmp_path, monkeypatch, kind):
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "0" * (2 * n))
    directory = tmp_path / "d"
    directory.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(SENTINEL)
    planted = directory / f".f.{'0' * 16}.tmp"
    if kind == "symlink":
        planted.symlink_to(victim)
    else:
        planted.write_bytes(SENTINEL)
    with pytest.raises(PKIError, match=r"\.f\.0{16}\.tmp: exists before the PKI made it"):
        _write(directory / "f", b"new content", 0o600)
    assert victim.read_bytes() == SENTINEL
    assert planted.lstat().st_size == (len(str(victim)) if kind == "symlink"
                                       else len(SENTINEL))
    assert not (directory / "f").exists()


def test_temp_names_are_unpredictable():
    names = {files.temp_name("apiserver.key") for _ in range(100)}
    assert len(names) == 100
    assert all(files.is_temp_of(n, {"apiserver.key"}) for n in names)
    assert not files.is_temp_of(f".apiserver.key.tmp{os.getpid()}", {"apiserver.key"})


def test_the_writer_used_alone_refuses_links_too(tmp_path):
    """bootstrap.control_plane.encryption writes DIR/local/encryption-keys.yaml with it."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    with pytest.raises(PKIError, match=r"linked: is a symbolic link"):
        _write(tmp_path / "linked" / "keys.yaml", b"secret", 0o600)
    assert list(real.iterdir()) == []
    (real / "victim").write_bytes(SENTINEL)
    os.chmod(real / "victim", 0o644)
    (real / "keys.yaml").symlink_to(real / "victim")
    with pytest.raises(PKIError, match=r"keys\.yaml: is a symbolic link"):
        _write(real / "keys.yaml", SENTINEL, 0o600)  # same bytes: once it only chmod-ed
    assert stat.S_IMODE((real / "victim").stat().st_mode) == 0o644
    assert (real / "victim").read_bytes() == SENTINEL
    assert _write(real / "new.yaml", b"x", 0o600) and not _write(real / "new.yaml", b"x", 0o600)
    assert stat.S_IMODE((real / "new.yaml").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- --out itself


def test_out_refusals_through_the_api(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_bytes(SENTINEL)
    inv = load(example_data())
    with pytest.raises(ConfigError, match="--out: empty"):
        generate(inv, "")
    with pytest.raises(ConfigError, match=r"file: is a file, not a directory"):
        generate(inv, a_file)
    with pytest.raises(ConfigError, match=r"file is a file, so nothing can be made under it"):
        generate(inv, a_file / "sub" / "pki")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConfigError, match=r"link: is a symbolic link"):
        generate(inv, tmp_path / "link")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    for workers in (0, -1, 100_000, True):
        with pytest.raises(ConfigError, match="--workers"):
            generate(inv, tmp_path / "pki", workers=workers)
    assert not (tmp_path / "pki").exists()
    assert a_file.read_bytes() == SENTINEL


def test_a_full_disk_is_one_line_not_a_traceback(fresh, monkeypatch):
    data, out, _outside = fresh
    target = out / "cp-c" / PKI / "apiserver.crt"
    target.unlink()

    def full(fd: int, content: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write_all", full)
    with pytest.raises(PKIError, match=r"apiserver\.crt: cannot be written \(No space left "
                                       r"on device\); fix that and run again") as caught:
        generate(load(data), out, workers=1)
    assert "\n" not in str(caught.value)
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []
