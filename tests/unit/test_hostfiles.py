"""The batched file scripts, run by a real local shell on files in a temp directory (no SSH,
no root): what one round trip learns, what the other writes, and what a cut leaves."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from bootstrap import hostfiles
from bootstrap.hostfiles import FileSpec
from bootstrap.runner import Result


class LocalShell:
    """A Runner that runs commands with the local sh; `cut_at` truncates stdin (a dropped
    connection mid-transfer)."""

    def __init__(self) -> None:
        self.name = "local"
        self.commands: list[str] = []
        self.cut_at: int | None = None

    def run(self, command: str, *, check: bool = True, timeout: float | None = None,
            stdin: bytes | None = None) -> Result:
        self.commands.append(command)
        if stdin is not None and self.cut_at is not None:
            stdin = stdin[:self.cut_at]
        proc = subprocess.run(["sh", "-c", command], input=stdin or b"", capture_output=True,
                              timeout=30)
        result = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        if check and not result.ok:
            raise RuntimeError(result.stderr)
        return result

    def read(self, path: str) -> bytes | None:
        return Path(path).read_bytes() if Path(path).exists() else None

    def put(self, path: str, content: bytes, mode: int, owner: str = "root",
            group: str = "root") -> bool:
        raise AssertionError("hostfiles must not fall back to one put per file")

    def remove(self, path: str) -> bool:
        raise AssertionError("not used")


def me() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def files(tmp_path: Path) -> list[FileSpec]:
    owner, group = me()
    return [
        FileSpec(str(tmp_path / "etc/kubernetes/pki/ca.crt"), b"CERT\n", 0o644, owner, group),
        FileSpec(str(tmp_path / "etc/kubernetes/pki/ca.key"), b"KEY\n" * 500, 0o600, owner,
                 group),
        FileSpec(str(tmp_path / "var/lib/kubelet/pki/kubelet.crt"), bytes(range(256)) * 8,
                 0o644, owner, group),
    ]


def test_sync_writes_everything_once_in_two_round_trips(files, tmp_path):
    shell = LocalShell()
    written, removed = hostfiles.sync(shell, files)
    assert written == [f.path for f in files] and removed == []
    assert len(shell.commands) == 2  # one stat, one write
    for f in files:
        assert Path(f.path).read_bytes() == f.content
        assert stat.S_IMODE(os.stat(f.path).st_mode) == f.mode
    assert stat.S_IMODE(os.stat(tmp_path / "etc/kubernetes/pki").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "etc/kubernetes").st_mode) == 0o755
    shell.commands.clear()
    assert hostfiles.sync(shell, files) == ([], [])
    assert len(shell.commands) == 1  # a converged host costs one round trip


def test_only_differing_files_are_rewritten(files):
    shell = LocalShell()
    hostfiles.sync(shell, files)
    os.chmod(files[0].path, 0o640)
    Path(files[2].path).write_bytes(b"tampered")
    inode = os.stat(files[1].path).st_ino
    assert hostfiles.sync(shell, files) == ([files[0].path, files[2].path], [])
    assert os.stat(files[1].path).st_ino == inode
    assert stat.S_IMODE(os.stat(files[0].path).st_mode) == 0o644
    assert Path(files[2].path).read_bytes() == files[2].content


def test_dry_run_reports_without_writing(files):
    shell = LocalShell()
    assert hostfiles.sync(shell, files, dry_run=True) == ([f.path for f in files], [])
    assert not any(Path(f.path).exists() for f in files)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_a_transfer_cut_short_leaves_old_or_new_never_partial(files, fraction):
    shell = LocalShell()
    old = [FileSpec(f.path, b"old " + f.content[:10], f.mode, f.owner, f.group) for f in files]
    hostfiles.sync(shell, old)
    script_size = len(_script_of(files))
    shell.cut_at = int(script_size * fraction)
    try:
        hostfiles.put_many(shell, files)
    except RuntimeError:
        pass  # the shell saw a truncated script and failed: the point of the test
    for new, before in zip(files, old, strict=True):
        content = Path(new.path).read_bytes()
        assert content in (new.content, before.content)
    leftovers = [p for f in files for p in Path(f.path).parent.iterdir() if ".mzk-" in p.name]
    assert leftovers == []


def _script_of(files: list[FileSpec]) -> bytes:
    captured: list[bytes] = []

    class Capture(LocalShell):
        def run(self, command, *, check=True, timeout=None, stdin=None):  # type: ignore[override]
            captured.append(stdin or b"")
            return Result(0, "", "")

    hostfiles.put_many(Capture(), files)
    return captured[0]


def test_absent_paths_are_removed_only_where_they_exist(tmp_path, files):
    shell = LocalShell()
    present = tmp_path / "a.key"
    present.write_bytes(b"x")
    absent = [str(present), str(tmp_path / "b.key")]
    assert hostfiles.sync(shell, files, dry_run=True, absent=absent) == (
        [f.path for f in files], [str(present)])
    assert present.exists()
    shell.commands.clear()
    assert hostfiles.sync(shell, files, absent=absent)[1] == [str(present)]
    assert not present.exists()
    assert len(shell.commands) == 3  # state, write, remove
    assert hostfiles.sync(shell, files, absent=absent) == ([], [])


def test_state_of_many_paths_in_one_command(tmp_path, files):
    shell = LocalShell()
    hostfiles.sync(shell, files)
    (tmp_path / "a dir").mkdir()
    (tmp_path / "empty").write_bytes(b"")
    paths = [f.path for f in files] + [str(tmp_path / "a dir"), str(tmp_path / "none"),
                                       str(tmp_path / "empty")]
    states = hostfiles.stat_many(shell, paths)
    assert [states[f.path] for f in files] == [f.state() for f in files]
    assert states[str(tmp_path / "a dir")] is None  # not a regular file
    assert states[str(tmp_path / "none")] is None
    assert states[str(tmp_path / "empty")].startswith(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 644 ")


def test_paths_with_spaces_and_quotes(tmp_path):
    owner, group = me()
    odd = FileSpec(str(tmp_path / "it's a dir" / "x y.conf"), b"$(touch /tmp/no)\n", 0o600,
                   owner, group)
    shell = LocalShell()
    assert hostfiles.sync(shell, [odd]) == ([odd.path], [])
    assert Path(odd.path).read_bytes() == odd.content
    assert hostfiles.sync(shell, [odd]) == ([], [])


def test_states_gathered_earlier_save_the_round_trip(files):
    shell = LocalShell()
    hostfiles.sync(shell, files)
    script = hostfiles.state_script([f.path for f in files])
    known = hostfiles.parse_states([f.path for f in files], shell.run(script).stdout)
    shell.commands.clear()
    assert hostfiles.sync(shell, files, known=known) == ([], [])
    assert shell.commands == []  # converged: nothing to ask, nothing to write
    partial = {files[0].path: known[files[0].path]}
    assert hostfiles.sync(shell, files, known=partial) == ([], [])
    assert len(shell.commands) == 1  # paths not covered: asked again
