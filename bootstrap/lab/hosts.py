"""A lab host's machinery: its sshd (config, host key, start in the host's network, mount
and UTS namespaces), its private file tree and bind mounts, its shadowed kernel values and
cgroup root, and killing every process of its network namespace. The lab's state, network
and life cycle are bootstrap.lab.build's.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bootstrap.errors import MultizoneError
from bootstrap.lab import cgroups
from bootstrap.lab.layout import HOST_DIRS, SHADOWED_SYSCTLS, LabHost, Layout, hosts_file

SSHD = "/usr/sbin/sshd"


class LabError(MultizoneError):
    """The lab could not be built or torn down on this machine."""


# --------------------------------------------------------------------------- helpers


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def ensure_keypair(path: Path, comment: str) -> str:
    """An ed25519 key in OpenSSH format at `path` (0600), made once; its public line."""
    if path.exists():
        private = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        write_private(path, private.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()))
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,  # type: ignore[union-attr]
                                               serialization.PublicFormat.OpenSSH).decode()
    write_private(path.with_name(path.name + ".pub"), f"{public} {comment}\n".encode(), 0o644)
    return public


def pid_alive(pid: int | None, needle: str = "") -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return needle in cmdline


# --------------------------------------------------------------------------- state


def sshd_config(home: Path, address: str) -> str:
    return "\n".join([
        f"ListenAddress {address}",
        "Port 22",
        f"HostKey {home / 'sshd' / 'ssh_host_ed25519_key'}",
        f"PidFile {home / 'sshd' / 'sshd.pid'}",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "AllowTcpForwarding yes",
        "MaxStartups 200:30:400",
        "MaxSessions 100",
        "LogLevel ERROR",
        "Subsystem sftp internal-sftp",
        "",
    ])


def start_sshd(netns: str, home: Path, binds: list[tuple[Path, str]], hostname: str) -> int:
    """sshd -D in the namespace, in private mount and UTS namespaces (the host's binds, its
    own hostname); the pid returned is sshd's own (every wrapper execs).

    The network namespace is entered with nsenter, not `ip netns exec`: that remounts /sys
    for the namespace and so loses /sys/fs/cgroup, which a kubelet and runc need.
    `-r` (no re-exec per connection): every lab host's sshd shares this machine's two
    cores with the client, and re-exec costs each connection a fresh sshd start-up;
    real hosts keep OpenSSH's default."""
    mounts = f"hostname {shlex.quote(hostname)} && " + "".join(
        f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)} && " for src, dst in binds)
    script = (f"{mounts}exec {SSHD} -D -r -f {shlex.quote(str(home / 'sshd' / 'sshd_config'))} "
              f"-E {shlex.quote(str(home / 'sshd' / 'sshd.log'))}")
    log = open(home / "sshd" / "start.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", "unshare", "--mount",
                                 "--uts", "--propagation", "private", "sh", "-c", script],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    finally:
        log.close()
    return proc.pid


def prepare_host_files(layout: Layout, host: LabHost | None, authorized: Path) -> tuple[
        str, list[tuple[Path, str]]]:
    """Config, host key and file tree of one host (or the bastion); its public host key."""
    name = host.name if host else "bastion"
    home = layout.dir / "hosts" / name
    (home / "sshd").mkdir(parents=True, exist_ok=True)
    public = ensure_keypair(home / "sshd" / "ssh_host_ed25519_key", f"root@{name}")
    address = host.address if host else "0.0.0.0"  # noqa: S104 - bastion: both links
    (home / "sshd" / "sshd_config").write_text(sshd_config(home, address))
    (home / "sshd" / "sshd.pid").unlink(missing_ok=True)
    for target in HOST_DIRS if host is not None else ("/root",):
        src = home / "fs" / target.lstrip("/")
        src.mkdir(parents=True, exist_ok=True)
        os.chmod(src, 0o700 if target == "/root" else 0o755)  # noqa: S103
    # Like cloud-init on EC2: the operator's key in the user's own authorized_keys, once;
    # afterwards the bootstrap keeps that file (its ssh-access step), so rotations are real.
    dot_ssh = home / "fs" / "root" / ".ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    if not (dot_ssh / "authorized_keys").exists():
        write_private(dot_ssh / "authorized_keys", authorized.read_bytes())
    (home / "fs" / "run" / "sshd").mkdir(parents=True, exist_ok=True)
    if host is not None:
        (home / "fs" / "etc" / "mzk" / "lab-host").write_text(
            f"lab host {name} of {layout.dir}\n")
        write_private(home / "hosts", hosts_file(layout, host).encode(), 0o644)
        shadow_sysctls(home)
        cgroup_root = cgroups.root_for(host.netns)
        cgroups.create(cgroup_root)
        (home / "fs" / cgroups.ROOT_FILE).write_text(cgroup_root + "\n")
    return public, binds(home, host is not None)


def shadow_sysctls(home: Path) -> None:
    """The host's copies of the kernel settings the kubelet checks: this machine's values
    at first, then whatever the bootstrap writes into them."""
    for name in SHADOWED_SYSCTLS:
        shadow = home / "sysctl" / name
        if not shadow.exists():
            shadow.parent.mkdir(parents=True, exist_ok=True)
            shadow.write_text(Path("/proc/sys", name).read_text())


def binds(home: Path, cluster_host: bool) -> list[tuple[Path, str]]:
    """What a host's mount namespace gets from DIR/hosts/<name>: its directories and, for
    cluster hosts, its own /etc/hosts (the endpoints' names)."""
    if not cluster_host:
        return [(home / "fs" / "root", "/root")]
    return [*((home / "fs" / t.lstrip("/"), t) for t in HOST_DIRS),
            (home / "hosts", "/etc/hosts"),
            *((home / "sysctl" / name, f"/proc/sys/{name}") for name in SHADOWED_SYSCTLS)]


def wait_for_sshd(layout: Layout, pids: dict[str, int], limit: float = 10.0) -> None:
    """sshd writes its pid file once it listens; wait for every one of them."""
    deadline = time.monotonic() + limit
    waiting = dict(pids)
    while waiting:
        for name, pid in list(waiting.items()):
            if (layout.dir / "hosts" / name / "sshd" / "sshd.pid").exists():
                del waiting[name]
            elif not pid_alive(pid):
                log = layout.dir / "hosts" / name / "sshd"
                text = " ".join(f.read_text(errors="replace").strip()
                                for f in (log / "start.log", log / "sshd.log") if f.exists())
                raise LabError(f"{name}: sshd exited at start: {text[-300:]}")
        if waiting and time.monotonic() > deadline:
            raise LabError(f"sshd did not start within {limit:g}s on: {', '.join(waiting)}")
        if waiting:
            time.sleep(0.02)


def kill_namespace(ns: str, limit: float = 5.0) -> None:
    """SIGKILL every process in a network namespace until none is left."""
    def pids() -> list[int]:
        proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    left = cgroups.kill_until_gone(pids, time.monotonic() + limit)
    if left:
        raise LabError(f"{ns}: processes {left} survive SIGKILL")
