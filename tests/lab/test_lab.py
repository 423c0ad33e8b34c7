"""The lab and the SSH layer against real sshd hosts in network namespaces."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paramiko
import pytest

from bootstrap.errors import HostConnectionError, StepError
from bootstrap.host_fanout import HostsFailed
from bootstrap.inventory import load
from bootstrap.lab import build
from bootstrap.lab.build import ensure_keypair, lab_namespaces
from bootstrap.services import LabSupervisor, Service, manager_for
from bootstrap.ssh import Connections
from bootstrap.ssh_host_keys import fingerprint

from .conftest import Lab, lab_unavailable, sshd_pids

pytestmark = pytest.mark.lab


def _quiet(_host: str, _title: str, _state: str) -> None:
    pass


def _connections(lab: Lab, retries: int = 0) -> Connections:
    """Fresh connections; few retries so that a dead host fails fast."""
    inv = lab.inventory
    inv = dataclasses.replace(inv, ssh=dataclasses.replace(inv.ssh, retries=retries,
                                                          connect_timeout=3))
    return Connections(inv, progress=_quiet)


def _gone(pid: int, wait: float = 3.0) -> bool:
    """Dead: no such process, or a zombie that init has yet to reap."""
    deadline = time.monotonic() + wait
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_every_host_is_reached_through_the_bastion_only(lab: Lab) -> None:
    with _connections(lab) as conns:
        names = conns.run_on_hosts(lab.inventory.hosts,
                                   lambda h, r: r.run("hostname").stdout.strip(), title="name")
        addresses = conns.run_on_hosts(
            lab.inventory.hosts, lambda h, r: r.run("ip -4 -o addr show eth0").stdout)
    assert names == {h.name: h.name for h in lab.inventory.hosts}
    with _connections(lab) as conns:  # zones reach each other through the router
        cp_b = lab.inventory.host("cp-b").address
        assert conns.runner("cp-a").run(f"echo > /dev/tcp/{cp_b}/22", check=False,
                                        timeout=5).exit_code == 0
    for host in lab.inventory.hosts:
        assert f" {host.address}/24 " in addresses[host.name]
    # The machine reaches the bastion directly ...
    with socket.create_connection((lab.layout.bastion_address, 22), timeout=2):
        pass
    # ... but no lab host: the root namespace's only route into the lab range is the
    # lab's unreachable guard (checked first, so that this test never sends a packet out).
    cp = lab.inventory.host("cp-a")
    route = subprocess.run(["ip", "route", "get", cp.address], capture_output=True,
                           text=True, check=False)
    assert route.returncode != 0 and "no route to host" in route.stderr.lower(), route
    with pytest.raises(OSError):
        socket.create_connection((cp.address, 22), timeout=1).close()


def test_a_changed_host_key_is_refused_naming_host_and_both_fingerprints(lab: Lab) -> None:
    host = lab.inventory.host("cp-b")
    key_path = lab.dir / "hosts" / "cp-b" / "sshd" / "ssh_host_ed25519_key"
    original = key_path.read_bytes()
    try:
        key_path.unlink()
        new_public = ensure_keypair(key_path, "impostor")
        build.restart_sshd(lab.dir, "cp-b")
        with _connections(lab) as conns:
            assert conns.runner("cp-a").run("true").ok  # others still fine
            with pytest.raises(HostConnectionError) as caught:
                conns.runner("cp-b")
        message = str(caught.value)
        assert "cp-b" in message
        assert fingerprint(host.host_key) in message
        assert fingerprint(new_public) in message
        assert fingerprint(host.host_key) != fingerprint(new_public)
    finally:
        key_path.write_bytes(original)
        build.restart_sshd(lab.dir, "cp-b")
    with _connections(lab) as conns:
        assert conns.runner("cp-b").run("hostname").stdout.strip() == "cp-b"


def test_put_is_atomic_idempotent_and_sets_mode_and_owner(lab: Lab) -> None:
    path = "/var/lib/mzk/test-put/pki/secret.key"
    with _connections(lab) as conns:
        r = conns.runner("cp-a")
        r.remove(path)
        assert r.put(path, b"secret\n", 0o600) is True
        assert r.read(path) == b"secret\n"
        assert r.run(f"stat -c '%a %U %G' {path}").stdout.split() == ["600", "root", "root"]
        assert r.run("stat -c %a /var/lib/mzk/test-put/pki").stdout.strip() == "700"
        assert r.run("stat -c %a /var/lib/mzk/test-put").stdout.strip() == "755"
        assert r.put(path, b"secret\n", 0o600) is False
        assert r.put(path, b"secret\n", 0o640, group="nogroup") is True
        assert r.run(f"stat -c '%a %U %G' {path}").stdout.split() == ["640", "root", "nogroup"]
        assert r.put(path, b"other\n", 0o640, group="nogroup") is True
        assert r.read(path) == b"other\n"
        listing = r.run("ls -a /var/lib/mzk/test-put/pki").stdout.split()
        assert sorted(listing) == [".", "..", "secret.key"]
        assert r.remove(path) is True
        assert r.remove(path) is False
        assert r.read(path) is None


def test_a_put_cut_short_by_a_dead_sshd_leaves_no_partial_file(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    host = lab.layout.host("cp-c")
    target_dir = host.home(lab.dir) / "fs" / "var" / "lib" / "mzk" / "cut"
    big = os.urandom(48 * 1024 * 1024)
    cut_after = 4 * 1024 * 1024
    sent_total = [0]
    real_send = paramiko.Channel.send

    def send(channel, data):  # type: ignore[no-untyped-def]
        # The host's sshd dies once 4 MiB of the 48 MiB are on their way: mid-transfer,
        # whatever the speed of this machine.
        sent = real_send(channel, data)
        before, sent_total[0] = sent_total[0], sent_total[0] + sent
        if before < cut_after <= sent_total[0]:
            for pid in sshd_pids(host.netns):
                os.kill(pid, signal.SIGKILL)
        return sent

    try:
        with _connections(lab) as conns:
            r = conns.runner("cp-c")
            r.run("mkdir -p /var/lib/mzk/cut")
            monkeypatch.setattr(paramiko.Channel, "send", send)
            with pytest.raises((HostConnectionError, StepError)):
                r.put("/var/lib/mzk/cut/big.bin", big, 0o600)
            monkeypatch.undo()
        assert sent_total[0] >= cut_after, "the transfer never got going"
        assert not (target_dir / "big.bin").exists()
        # The orphaned shell sees its stdin end, finds the hash wrong and removes its temp.
        deadline = time.monotonic() + 10
        while any(target_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(target_dir.iterdir()) == []
    finally:
        monkeypatch.undo()
        build.restart_sshd(lab.dir, "cp-c")


def test_many_sessions_at_once_share_one_connection_without_losing_it(lab: Lab) -> None:
    # Commands that finish at once, from several threads, and commands that exit before
    # reading all their input: the server closes those channels while we still send.
    # OpenSSH drops the whole connection on an EOF for a channel it has freed, so any EOF
    # sent after our CLOSE would fail every thread here.
    errors: list[BaseException] = []

    with _connections(lab) as conns:
        runner = conns.runner("cp-a")
        transport = runner.client.get_transport()

        def quick(n: int) -> None:
            try:
                for i in range(n):
                    assert runner.run(f"echo {i}").stdout == f"{i}\n"
            except BaseException as err:  # noqa: BLE001 - examined below
                errors.append(err)

        def early_exit(n: int) -> None:
            try:
                for _ in range(n):
                    got = runner.run("head -c 1 >/dev/null; echo read-one", stdin=b"x" * 4096)
                    assert got.stdout == "read-one\n"
            except BaseException as err:  # noqa: BLE001 - examined below
                errors.append(err)

        threads = [threading.Thread(target=quick, args=(60,)) for _ in range(3)]
        threads += [threading.Thread(target=early_exit, args=(60,))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        assert runner.client.get_transport() is transport and transport.is_active()


def test_one_dead_host_fails_alone_and_is_named(lab: Lab) -> None:
    node = lab.layout.host("node-1")
    try:
        for pid in sshd_pids(node.netns):
            os.kill(pid, signal.SIGKILL)
        with _connections(lab) as conns, pytest.raises(HostsFailed) as caught:
            conns.run_on_hosts(lab.inventory.hosts,
                               lambda h, r: r.run("hostname").stdout.strip(), title="probe")
        err = caught.value
        assert isinstance(err, StepError)
        assert set(err.failures) == {"node-1"}
        assert set(err.results) == {h.name for h in lab.inventory.hosts} - {"node-1"}
        assert err.results["cp-a"] == "cp-a"
        lines = str(err).splitlines()
        assert len(lines) == 2 and lines[1].strip().startswith("node-1:")
    finally:
        build.restart_sshd(lab.dir, "node-1")


def test_each_host_sees_only_its_own_files(lab: Lab) -> None:
    path = "/etc/kubernetes/isolation-check"
    with _connections(lab) as conns:
        conns.runner("cp-a").put(path, b"cp-a only\n", 0o644)
        try:
            assert conns.runner("cp-a").read(path) == b"cp-a only\n"
            assert conns.runner("cp-b").read(path) is None
            assert conns.runner("node-1").read(path) is None
        finally:
            conns.runner("cp-a").remove(path)
    assert not Path(path).exists()  # nothing leaked to the machine itself


def test_lab_supervisor_keeps_a_service_running(lab: Lab) -> None:
    service = Service("mzk-test-sleeper", ["sleep", "4242"], env={"MODE": "lab test"})
    with _connections(lab) as conns:
        r = conns.runner("cp-a")
        manager = manager_for(r)
        assert isinstance(manager, LabSupervisor)
        try:
            assert manager.ensure(r, service) is True
            first = manager.state(r, service.name)
            assert first.main_pid is not None and manager.is_active(r, service.name)
            assert r.run(f"tr '\\0' ' ' < /proc/{first.main_pid}/cmdline").stdout \
                .strip() == "sleep 4242"
            assert r.run(f"tr '\\0' '\\n' < /proc/{first.main_pid}/environ").stdout \
                .count("MODE=lab test") == 1
            assert manager.ensure(r, service) is False
            assert manager.state(r, service.name) == first
            r.run(f"kill -9 {first.main_pid}")
            deadline = time.monotonic() + 10
            state = manager.state(r, service.name)
            while state.main_pid in (None, first.main_pid) and time.monotonic() < deadline:
                time.sleep(0.1)
                state = manager.state(r, service.name)
            assert state.main_pid not in (None, first.main_pid)
            assert state.supervisor_pid == first.supervisor_pid
            changed = Service(service.name, ["sleep", "4343"])
            assert manager.ensure(r, changed) is True
            assert manager.state(r, service.name).supervisor_pid != first.supervisor_pid
            # The service is not visible as running on another host's supervisor files.
            assert not manager.is_active(conns.runner("cp-b"), service.name)
        finally:
            manager.stop(r, service.name)
        assert not manager.is_active(r, service.name)
        assert "sleep 4343" not in r.run("ps -eo args").stdout


def test_up_twice_converges_and_down_removes_everything(tmp_path: Path) -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    lab_dir = tmp_path / "second-lab"
    quiet = lambda _m: None  # noqa: E731
    try:
        layout = build.up(lab_dir, workers=1, say=quiet)
        first_inventory = (lab_dir / "inventory.yaml").read_text()
        assert build.up(lab_dir, workers=1, say=quiet).namespaces == layout.namespaces
        dead = build.State.load(lab_dir).data["pids"]["node-1"]
        os.kill(dead, signal.SIGKILL)
        assert _gone(dead)
        assert not next(s for s in build.status(lab_dir) if s.name == "node-1").sshd_up
        build.up(lab_dir, workers=1, say=quiet)  # repairs only the dead sshd
        assert (lab_dir / "inventory.yaml").read_text() == first_inventory
        assert sorted(lab_namespaces(layout.prefix)) == sorted(layout.namespaces)
        assert all(s.sshd_up for s in build.status(lab_dir))
        assert oct((lab_dir / "id_ed25519").stat().st_mode & 0o777) == "0o600"
        inventory = load(lab_dir / "inventory.yaml")
        with Connections(inventory, progress=_quiet) as conns:
            r = conns.runner("cp-a")
            LabSupervisor().ensure(r, Service("mzk-down-check", ["sleep", "4444"]))
            supervisor = LabSupervisor().state(r, "mzk-down-check").supervisor_pid
        assert supervisor is not None and Path(f"/proc/{supervisor}").exists()
        sshd_pids = build.State.load(lab_dir).data["pids"].values()
        # A crash that lost the state file: down still finds the lab by its prefix.
        (lab_dir / build.STATE_FILE).unlink()
        removed = build.down(lab_dir, say=quiet)
        assert sorted(removed) == sorted(layout.namespaces)
    finally:
        build.down(lab_dir, say=quiet)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert layout.prefix not in listed
    mounts = Path("/proc/mounts").read_text()
    assert layout.prefix not in mounts and str(lab_dir) not in mounts
    assert _gone(supervisor)
    assert all(_gone(pid) for pid in sshd_pids)
    guard = subprocess.run(["ip", "route", "show", "type", "unreachable"], text=True,
                           capture_output=True, check=True).stdout
    assert f"metric {build.GUARD_METRIC + layout.link_slot}" not in guard
    assert not Path(f"/sys/class/net/{layout.root_if}").exists()
    assert not lab_dir.exists()
    assert re.search(r"\bsleep 4444\b", subprocess.run(["ps", "-eo", "args"], text=True,
                     capture_output=True, check=True).stdout) is None


def test_a_lab_directory_that_its_hosts_would_not_see_is_refused() -> None:
    """Each host gets its own /var/lib, /run, ... (layout.HOST_DIRS): a lab kept below one
    of them would hide its own sshd files from its hosts."""
    for where in ("/var/lib/mzk-test-lab", "/run/mzk-test-lab/lab", "/root/lab"):
        proc = subprocess.run([sys.executable, "-m", "bootstrap", "lab", "up", "--dir", where],
                              cwd=Path(__file__).resolve().parents[2], capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and f"--dir {where}" in proc.stderr
        assert not Path(where).exists()
