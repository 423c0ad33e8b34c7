"""bootstrap.ssh without network or root: pinning, the put script, FakeRunner, fan-out."""

from __future__ import annotations

import getpass
import grp
import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bootstrap.errors import HostConnectionError, StepError
from bootstrap.host_fanout import HostsFailed, run_on_hosts
from bootstrap.runner import Result, parent_dirs, put_script, same_file, stat_script
from bootstrap.ssh import _transient
from bootstrap.ssh_host_keys import (
    RejectUnpinnedKey,
    fingerprint,
    known_name,
    parse_public_key,
    pinned_host_keys,
)
from tests.unit.fakes import FakeRunner


def _key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


@pytest.fixture(scope="module")
def keys() -> tuple[paramiko.PKey, paramiko.PKey]:
    """An ed25519 key (read back from its OpenSSH line) and an ECDSA key."""
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    ed = parse_public_key(public + " comment")
    assert _key_line(ed) == public
    return ed, paramiko.ECDSAKey.generate()


def test_fingerprint_matches_ssh_keygen(tmp_path: Path, keys) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed")
    for key in keys:
        pub = tmp_path / "k.pub"
        pub.write_text(_key_line(key) + " test\n")
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
                             capture_output=True, text=True, check=True).stdout
        assert out.split()[1] == fingerprint(_key_line(key)) == fingerprint(key)
        assert not fingerprint(key).endswith("=")


def test_pinned_host_keys_hold_one_key_under_the_name_paramiko_looks_up(keys) -> None:
    ed, _ = keys
    assert known_name("10.0.0.1", 22) == "10.0.0.1"
    assert known_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"
    pinned = pinned_host_keys("10.0.0.1", 2222, _key_line(ed))
    assert list(pinned.keys()) == ["[10.0.0.1]:2222"]
    assert pinned.check("[10.0.0.1]:2222", ed)
    assert pinned.lookup("10.0.0.1") is None


def test_policy_rejects_unknown_key_naming_host_and_both_fingerprints(keys) -> None:
    ed, ecdsa = keys
    policy = RejectUnpinnedKey("cp-a", _key_line(ed))
    assert isinstance(policy, paramiko.MissingHostKeyPolicy)
    with pytest.raises(HostConnectionError) as caught:
        policy.missing_host_key(paramiko.SSHClient(), "10.0.0.1", ecdsa)
    message = str(caught.value)
    assert message.startswith("cp-a:")
    assert fingerprint(ed) in message and fingerprint(ecdsa) in message


def test_no_auto_add_and_no_known_hosts_in_the_module() -> None:
    import bootstrap.ssh
    import bootstrap.ssh_host_keys

    source = "".join(Path(m.__file__).read_text()
                     for m in (bootstrap.ssh, bootstrap.ssh_host_keys) if m.__file__)
    assert "AutoAddPolicy" not in source and "WarningPolicy" not in source
    assert "load_system_host_keys" not in source.replace("never load_system_host_keys", "")


def test_transient_failures_are_retried_but_not_key_or_auth_failures(keys) -> None:
    ed, ecdsa = keys
    assert _transient(ConnectionRefusedError())
    assert _transient(TimeoutError())
    assert _transient(ConnectionResetError())
    assert _transient(paramiko.ChannelException(2, "Connect failed"))
    assert not _transient(HostConnectionError("cp-a: host key mismatch"))
    assert not _transient(paramiko.AuthenticationException("denied"))
    assert not _transient(paramiko.BadHostKeyException("h", ecdsa, ed))


def test_parent_dirs_make_pki_private() -> None:
    assert parent_dirs("/etc/kubernetes/pki/etcd/ca.key") == [
        ("/etc", 0o755), ("/etc/kubernetes", 0o755), ("/etc/kubernetes/pki", 0o700),
        ("/etc/kubernetes/pki/etcd", 0o755)]
    assert parent_dirs("/x") == []


def _me() -> tuple[str, str]:
    return getpass.getuser(), grp.getgrgid(os.getgid()).gr_name


def _sh(script: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", script], input=stdin, capture_output=True, check=False)


def test_put_script_writes_atomically_with_mode_and_creates_parents(tmp_path: Path) -> None:
    user, group = _me()
    target = tmp_path / "a" / "pki" / "x.key"
    proc = _sh(put_script(str(target), b"data\n", 0o640, user, group), b"data\n")
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == b"data\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "a" / "pki").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.key"]
    stat = _sh(stat_script(str(target))).stdout.decode()
    assert same_file(stat, b"data\n", 0o640, user, group)
    assert not same_file(stat, b"data\n", 0o600, user, group)
    assert not same_file(stat, b"other", 0o640, user, group)
    assert _sh(stat_script(str(tmp_path / "absent"))).stdout == b""


def test_put_script_refuses_truncated_content_and_leaves_nothing(tmp_path: Path) -> None:
    user, group = _me()
    target = tmp_path / "f"
    target.write_bytes(b"old")
    content = b"x" * 100_000
    proc = _sh(put_script(str(target), content, 0o600, user, group), content[:5000])
    assert proc.returncode == 90
    assert b"incomplete" in proc.stderr
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_same_file_rejects_garbage() -> None:
    assert not same_file("", b"", 0o644, "root", "root")
    digest = hashlib.sha256(b"").hexdigest()
    assert same_file(f"{digest} 644 root root\n", b"", 0o644, "root", "root")
    assert not same_file(f"{digest} 644 root adm\n", b"", 0o644, "root", "root")


def test_fake_runner_put_is_idempotent_and_tracks_writes() -> None:
    fake = FakeRunner("cp-a")
    assert fake.put("/etc/a", b"1", 0o600) is True
    assert fake.put("/etc/a", b"1", 0o600) is False
    assert fake.put("/etc/a", b"1", 0o644) is True
    assert fake.read("/etc/a") == b"1" and fake.read("/etc/b") is None
    assert fake.writes == ["/etc/a", "/etc/a"]
    assert fake.remove("/etc/a") is True and fake.remove("/etc/a") is False


def test_fake_runner_scripted_answers_and_check() -> None:
    fake = FakeRunner("cp-b").on("etcdctl", stdout="healthy")
    fake.on("systemctl start", exit_code=1, stderr="line1\nUnit etcd.service not found.")
    assert fake.run("etcdctl endpoint health").stdout == "healthy"
    assert fake.run("systemctl start etcd", check=False).exit_code == 1
    with pytest.raises(StepError) as caught:
        fake.run("systemctl start etcd")
    message = str(caught.value)
    assert "cp-b" in message and "systemctl start etcd" in message
    assert "Unit etcd.service not found." in message
    assert fake.commands[-1] == "systemctl start etcd"
    strict = FakeRunner("x", strict=True)
    with pytest.raises(AssertionError):
        strict.run("rm -rf /")
    handled = FakeRunner().on("cat", handler=lambda c, s: Result(0, (s or b"").decode(), ""))
    assert handled.run("cat", stdin=b"echo").stdout == "echo"


class _Host:
    def __init__(self, name: str) -> None:
        self.name = name


def test_run_on_hosts_collects_every_failure_and_keeps_results() -> None:
    seen: list[tuple[str, str, str]] = []

    def fn(host: _Host) -> str:
        if host.name in ("node-2", "cp-b"):
            raise StepError(f"{host.name}: broken\nsecond line")
        return host.name.upper()

    hosts = [_Host(n) for n in ("cp-a", "cp-b", "node-1", "node-2")]
    with pytest.raises(HostsFailed) as caught:
        run_on_hosts(hosts, fn, limit=2, title="placing PKI",
                     progress=lambda h, t, s: seen.append((h, t, s)))
    err = caught.value
    assert isinstance(err, StepError)
    assert err.results == {"cp-a": "CP-A", "node-1": "NODE-1"}
    assert set(err.failures) == {"cp-b", "node-2"}
    lines = str(err).splitlines()
    assert lines[0].startswith("placing PKI: 2 of 4")
    assert lines[1:] == ["  cp-b: cp-b: broken second line",
                         "  node-2: node-2: broken second line"]
    assert ("cp-a", "placing PKI", "ok") in seen
    assert ("node-2", "placing PKI", "failed: node-2: broken second line") in seen


def test_run_on_hosts_respects_the_limit_and_keeps_host_order() -> None:
    running, peak, lock = [0], [0], threading.Lock()

    def fn(name: str) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return len(name)

    names = [f"node-{i}" for i in range(12)]
    out = run_on_hosts(names, fn, limit=3, progress=lambda *_: None)
    assert list(out) == names
    assert 1 < peak[0] <= 3


def test_commands_get_sudo_n_unless_the_user_is_root() -> None:
    import shlex

    from bootstrap.ssh_runner import SSHRunner

    admin = SSHRunner("cp-a", paramiko.SSHClient(), "admin")
    assert shlex.split(admin._wrap("echo 'a b' > /etc/x")) == [
        "sudo", "-n", "sh", "-c", "echo 'a b' > /etc/x"]
    assert SSHRunner("cp-a", paramiko.SSHClient(), "root")._wrap("id") == "id"
