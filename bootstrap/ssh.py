"""SSH to the hosts of an inventory: pinned host keys, key-only login, an optional bastion.

Steps never talk to paramiko: they get a `Runner` (run a command, read a file, place a file
atomically, remove a file). `SSHRunner` is the real one; `FakeRunner` answers from memory so
that step tests need no network. `Connections` opens one connection per host (through the
bastion) and `run_on_hosts` fans a function out over hosts, collecting every failure into
one `HostsFailed` error instead of stopping at the first.

Host keys come only from the inventory: the user's known_hosts is never read and an unknown
or different key is refused with both fingerprints, never added.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import posixpath
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import paramiko

from bootstrap.errors import HostConnectionError, StepError

log = logging.getLogger("bootstrap.ssh")

T = TypeVar("T")

# (host name, step title, state): state is "start", "ok" or "failed: <reason>".
Progress = Callable[[str, str, str], None]


def log_progress(host: str, title: str, state: str) -> None:
    """Default progress hook: one log line per host and state."""
    log.info("%s: %s ... %s", host, title, state)


def print_progress(host: str, title: str, state: str) -> None:
    """Progress for the command line: `cp-a: placing PKI ... ok`, one line per finished host."""
    if state != "start":
        print(f"{host}: {title} ... {state}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- host keys


def fingerprint(key: str | paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint (`SHA256:<base64, no padding>`) of a key or key line."""
    if isinstance(key, str):
        blob = base64.b64decode(key.split()[1])
    else:
        blob = key.asbytes()
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def parse_public_key(line: str) -> paramiko.PKey:
    """An OpenSSH public key line (`type base64 [comment]`) as a paramiko key."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key line: {line!r}")
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))


def known_name(address: str, port: int) -> str:
    """The name paramiko looks a server's key up under: `addr`, or `[addr]:port` off 22."""
    return address if port == 22 else f"[{address}]:{port}"


def pinned_host_keys(address: str, port: int, key_line: str) -> paramiko.HostKeys:
    """A HostKeys that holds exactly one key: the inventory's key for this address."""
    keys = paramiko.HostKeys()
    key = parse_public_key(key_line)
    keys.add(known_name(address, port), key.get_name(), key)
    return keys


def mismatch_message(host: str, expected: str, presented: paramiko.PKey) -> str:
    return (f"{host}: host key mismatch: the inventory pins {fingerprint(expected)} but the "
            f"host presented {fingerprint(presented)} ({presented.get_name()}); the host was "
            "rebuilt or someone is in the middle: check the host's key and update the "
            "inventory, nothing was sent to it")


class RejectUnpinnedKey(paramiko.MissingHostKeyPolicy):
    """Refuse every key that is not the pinned one (paramiko asks only for unknown keys)."""

    def __init__(self, host: str, expected: str) -> None:
        self.host = host
        self.expected = expected

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise HostConnectionError(mismatch_message(self.host, self.expected, key))


# --------------------------------------------------------------------------- connecting


@dataclass(frozen=True)
class Target:
    """Where and how to reach one SSH server, with its pinned key."""

    name: str
    address: str
    port: int
    host_key: str


def _transient(err: BaseException) -> bool:
    """Worth another try: refused, timed out, reset, or the server not ready yet."""
    if isinstance(err, HostConnectionError | paramiko.AuthenticationException
                  | paramiko.BadHostKeyException):
        return False
    if isinstance(err, paramiko.ChannelException):
        return True  # the bastion could not open the TCP connection (refused, unreachable)
    if isinstance(err, (socket.timeout, TimeoutError, ConnectionError, EOFError,
                        paramiko.ssh_exception.NoValidConnectionsError)):
        return True
    if isinstance(err, paramiko.SSHException):
        text = str(err)
        return "banner" in text or "closed" in text or "reset" in text
    return isinstance(err, OSError)


def _no_delay(client: paramiko.SSHClient) -> None:
    """Disable Nagle on a TCP connection: small packets (each command) go out at once
    instead of waiting ~40ms for a delayed ACK."""
    transport = client.get_transport()
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def load_private_key(path: str) -> paramiko.PKey:
    """The client key from `ssh.private_key` (`~` expanded); any supported key type."""
    full = os.path.expanduser(path)
    try:
        return paramiko.PKey.from_path(full)
    except (OSError, paramiko.SSHException) as err:
        raise HostConnectionError(f"{full}: cannot load the SSH private key ({err}); check "
                                  "ssh.private_key in the inventory") from err


def open_client(target: Target, user: str, key: paramiko.PKey, *, timeout: float,
                retries: int = 0, via: paramiko.Transport | None = None,
                backoff: float = 0.5) -> paramiko.SSHClient:
    """Connect, verify the pinned key, log in with the key; retry transient failures.

    With `via`, the TCP connection is a `direct-tcpip` channel of that (bastion) transport.
    """
    attempt = 0
    while True:
        client = paramiko.SSHClient()
        # Only the pinned key: never load_system_host_keys(), never auto-add.
        pinned = pinned_host_keys(target.address, target.port, target.host_key)
        for name in pinned.keys():
            for keytype, pkey in pinned[name].items():
                client.get_host_keys().add(name, keytype, pkey)
        client.set_missing_host_key_policy(RejectUnpinnedKey(target.name, target.host_key))
        try:
            sock = None
            if via is not None:
                sock = via.open_channel("direct-tcpip", (target.address, target.port),
                                        ("127.0.0.1", 0), timeout=timeout)
            client.connect(target.address, port=target.port, username=user, pkey=key,
                           sock=sock, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout, channel_timeout=timeout,
                           look_for_keys=False, allow_agent=False)
            _no_delay(client)
            return client
        except paramiko.BadHostKeyException as err:
            client.close()
            raise HostConnectionError(mismatch_message(target.name, target.host_key,
                                                       err.key)) from err
        except paramiko.AuthenticationException as err:
            client.close()
            raise HostConnectionError(f"{target.name}: the key was refused for user {user} "
                                      f"({err}); authorize the key on the host") from err
        except Exception as err:
            client.close()
            if not _transient(err) or attempt >= retries:
                if isinstance(err, HostConnectionError):
                    raise
                how = " through the bastion" if via is not None else ""
                raise HostConnectionError(
                    f"{target.name}: cannot connect to {target.address}:{target.port}{how} "
                    f"after {attempt + 1} attempt(s) ({type(err).__name__}: {err}); check the "
                    "address, the security groups and that sshd runs") from err
            delay = backoff * (2 ** attempt)
            log.debug("%s: %s, retrying in %.1fs", target.name, err, delay)
            time.sleep(delay)
            attempt += 1


# --------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Runner(Protocol):
    """What a step may do on one host. Every effect is idempotent or reports a change."""

    name: str

    def run(self, command: str, *, check: bool = True, timeout: float | None = None,
            stdin: bytes | None = None) -> Result: ...

    def read(self, path: str) -> bytes | None: ...

    def put(self, path: str, content: bytes, mode: int, owner: str = "root",
            group: str = "root") -> bool: ...

    def remove(self, path: str) -> bool: ...


def _tail(text: str, lines: int = 5) -> str:
    rest = text.strip().splitlines()[-lines:]
    return " | ".join(rest) if rest else "(no output)"


def command_failed(host: str, command: str, result: Result) -> StepError:
    short = command if len(command) <= 120 else command[:117] + "..."
    return StepError(f"{host}: command failed with exit code {result.exit_code}: {short}: "
                     f"{_tail(result.stderr or result.stdout)}")


def parent_dirs(path: str) -> list[tuple[str, int]]:
    """Every ancestor of `path` below `/`, outermost first, with the mode to create it with
    (0700 for a directory named pki, which holds private keys, else 0755)."""
    out: list[tuple[str, int]] = []
    current = posixpath.dirname(posixpath.normpath(path))
    while current not in ("/", ""):
        out.append((current, 0o700 if posixpath.basename(current) == "pki" else 0o755))
        current = posixpath.dirname(current)
    return out[::-1]


def put_script(path: str, content: bytes, mode: int, owner: str, group: str) -> str:
    """Shell that writes stdin to `path` atomically and only if it arrived whole.

    The temp file lives beside the target so the rename is atomic; the content's sha256 is
    checked before the rename, so a transfer cut short (connection lost, sshd killed)
    leaves the old file, never a partial one, and the trap removes the temp file.
    """
    q = shlex.quote
    digest = hashlib.sha256(content).hexdigest()
    directory = posixpath.dirname(path) or "/"
    lines = ["set -e", "umask 077"]
    # A concurrent put may create the same parent first: that is fine.
    lines += [f"[ -d {q(d)} ] || mkdir -m {m:o} -- {q(d)} 2>/dev/null || [ -d {q(d)} ]"
              for d, m in parent_dirs(path)]
    lines += [
        f"tmp=$(mktemp {q(posixpath.join(directory, '.' + posixpath.basename(path)))}"
        ".mzk-XXXXXX)",
        "trap 'rm -f \"$tmp\"' EXIT",
        "trap 'exit 91' HUP INT PIPE TERM",
        'cat > "$tmp"',
        f'if [ "$(sha256sum < "$tmp" | cut -d" " -f1)" != {digest} ]; then',
        '  rm -f "$tmp"; echo "content arrived incomplete" >&2; exit 90',
        "fi",
        f'chown {q(owner)}:{q(group)} "$tmp"',
        f'chmod {mode:o} "$tmp"',
        'sync -- "$tmp"',
        f'mv -f -- "$tmp" {q(path)}',
        f"sync -- {q(directory)} || true",
    ]
    return "\n".join(lines)


def stat_script(path: str) -> str:
    """Prints `sha256 mode owner group` of a regular file, nothing if absent."""
    q = shlex.quote(path)
    return (f"if [ -f {q} ]; then printf '%s ' \"$(sha256sum < {q} | cut -d' ' -f1)\"; "
            f"stat -c '%a %U %G' -- {q}; fi")


def same_file(stat_line: str, content: bytes, mode: int, owner: str, group: str) -> bool:
    """Whether the output of `stat_script` describes exactly this content, mode and owner."""
    parts = stat_line.split()
    if len(parts) != 4:
        return False
    digest, got_mode, got_owner, got_group = parts
    return (digest == hashlib.sha256(content).hexdigest() and int(got_mode, 8) == mode
            and got_owner == owner and got_group == group)


# What paramiko raises when the connection under a channel is gone.
CONNECTION_LOST = (OSError, paramiko.SSHException, EOFError)


def _send_eof_in_order(chan: paramiko.Channel) -> None:
    """Send EOF on `chan` while holding its lock.

    paramiko's `shutdown_write` builds the EOF under the channel lock but sends it after
    releasing it, so the transport thread can answer the server's CLOSE in between. OpenSSH
    has then freed the channel and drops the whole connection on the late EOF ("ieof packet
    referred to nonexistent channel"), taking every other session on it along. Holding the
    lock keeps our EOF ahead of our CLOSE.
    """
    with chan.lock:
        message = chan._send_eof()  # type: ignore[attr-defined]  # paramiko is pinned
        if message is not None and chan.transport is not None:
            chan.transport._send_user_message(message)  # type: ignore[attr-defined]


class SSHRunner:
    """A `Runner` over one open SSH connection; `sudo -n` when the user is not root."""

    def __init__(self, name: str, client: paramiko.SSHClient, user: str,
                 command_timeout: float = 300.0) -> None:
        self.name = name
        self.client = client
        self.user = user
        self.command_timeout = command_timeout

    def _wrap(self, command: str) -> str:
        if self.user == "root":
            return command
        return f"sudo -n sh -c {shlex.quote(command)}"

    def exec(self, command: str, *, timeout: float | None = None,
             stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
        """Run a shell command; exit code, raw stdout and stderr. Raises on timeout."""
        limit = self.command_timeout if timeout is None else timeout
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise HostConnectionError(f"{self.name}: the SSH connection is closed; reconnect")
        try:
            chan = transport.open_session(timeout=limit)
        except CONNECTION_LOST as err1:
            raise HostConnectionError(f"{self.name}: cannot open a session ({err1}); "
                                      "the connection was lost") from err1
        try:
            chan.settimeout(limit)
            # Without input, stdin is /dev/null on the host and no EOF is sent at all.
            chan.exec_command(self._wrap(command) if stdin else
                              f"exec </dev/null\n{self._wrap(command)}")
            if stdin:
                offset = 0
                try:
                    while offset < len(stdin):
                        sent = chan.send(stdin[offset:offset + 32768])
                        if sent <= 0:
                            break
                        offset += sent
                except (OSError, paramiko.SSHException):
                    pass  # the command stopped reading; its exit status and stderr say why
                _send_eof_in_order(chan)
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + limit
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                # Exit status may arrive before the last output (OpenSSH sends it when the
                # child exits): finish only once the output has ended (EOF) too.
                done = chan.eof_received or chan.closed
                if done and chan.exit_status_ready() and not chan.recv_ready() \
                        and not chan.recv_stderr_ready():
                    break
                if chan.closed and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    raise StepError(f"{self.name}: command timed out after {limit:g}s: "
                                    f"{command[:120]}")
                chan.status_event.wait(0.05)
            code = chan.recv_exit_status() if chan.exit_status_ready() else -1
            return code, bytes(out), bytes(err)
        except CONNECTION_LOST as err2:
            raise HostConnectionError(f"{self.name}: connection lost while running "
                                      f"{command[:80]!r} ({err2})") from err2
        finally:
            try:
                chan.close()
            except CONNECTION_LOST:
                pass  # the connection is already gone; the error above says so

    def run(self, command: str, *, check: bool = True, timeout: float | None = None,
            stdin: bytes | None = None) -> Result:
        code, out, err = self.exec(command, timeout=timeout, stdin=stdin)
        result = Result(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        if check and code != 0:
            raise command_failed(self.name, command, result)
        return result

    def read(self, path: str) -> bytes | None:
        q = shlex.quote(path)
        code, out, err = self.exec(f"if [ -f {q} ]; then exec cat -- {q}; "
                                   f"elif [ -e {q} ]; then echo 'not a regular file' >&2; "
                                   "exit 4; else exit 3; fi")
        if code == 3:
            return None
        if code != 0:
            raise StepError(f"{self.name}: cannot read {path}: "
                            f"{_tail(err.decode('utf-8', 'replace'))}")
        return out

    def put(self, path: str, content: bytes, mode: int, owner: str = "root",
            group: str = "root") -> bool:
        current = self.run(stat_script(path)).stdout
        if same_file(current, content, mode, owner, group):
            return False
        self.run(put_script(path, content, mode, owner, group), stdin=content)
        return True

    def remove(self, path: str) -> bool:
        q = shlex.quote(path)
        out = self.run(f"if [ -e {q} ] || [ -L {q} ]; then rm -f -- {q} && echo removed; fi")
        return out.stdout.strip() == "removed"


# --------------------------------------------------------------------------- fake runner


@dataclass
class FakeFile:
    content: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


Responder = Callable[[str, bytes | None], Result]


@dataclass
class FakeRunner:
    """A `Runner` with an in-memory file system and scripted command answers.

    `on(pattern, ...)` registers an answer for commands containing `pattern` (latest
    registration wins). Unanswered commands succeed with no output, or raise
    AssertionError with `strict=True`. Every command is recorded in `commands`, every
    write in `writes`.
    """

    name: str = "fake"
    files: dict[str, FakeFile] = field(default_factory=dict)
    strict: bool = False
    commands: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    _answers: list[tuple[str, Responder]] = field(default_factory=list)

    def on(self, pattern: str, stdout: str = "", exit_code: int = 0, stderr: str = "",
           handler: Responder | None = None) -> FakeRunner:
        fixed = Result(exit_code, stdout, stderr)
        self._answers.append((pattern, handler or (lambda _c, _s: fixed)))
        return self

    def run(self, command: str, *, check: bool = True, timeout: float | None = None,
            stdin: bytes | None = None) -> Result:
        self.commands.append(command)
        for pattern, responder in reversed(self._answers):
            if pattern in command:
                result = responder(command, stdin)
                break
        else:
            if self.strict:
                raise AssertionError(f"{self.name}: unexpected command: {command}")
            result = Result(0, "", "")
        if check and result.exit_code != 0:
            raise command_failed(self.name, command, result)
        return result

    def read(self, path: str) -> bytes | None:
        f = self.files.get(path)
        return None if f is None else f.content

    def put(self, path: str, content: bytes, mode: int, owner: str = "root",
            group: str = "root") -> bool:
        new = FakeFile(bytes(content), mode, owner, group)
        if self.files.get(path) == new:
            return False
        self.files[path] = new
        self.writes.append(path)
        return True

    def remove(self, path: str) -> bool:
        return self.files.pop(path, None) is not None


# --------------------------------------------------------------------------- many hosts


class HostsFailed(StepError):
    """Some hosts failed; `failures` maps host to its error, `results` holds the others."""

    def __init__(self, title: str, failures: Mapping[str, BaseException],
                 results: Mapping[str, Any]) -> None:
        self.failures = dict(failures)
        self.results = dict(results)
        lines = [f"{title}: {len(self.failures)} of {len(self.failures) + len(self.results)} "
                 "host(s) failed:"]
        lines += [f"  {name}: {_one_line(err)}" for name, err in sorted(self.failures.items())]
        super().__init__("\n".join(lines))


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


def _name(host: Any) -> str:
    return host if isinstance(host, str) else host.name


def run_on_hosts(hosts: Iterable[Any], fn: Callable[[Any], T], limit: int = 32, *,
                 title: str = "step", progress: Progress | None = None) -> dict[str, T]:
    """Run `fn(host)` for every host, at most `limit` at once; results by host name.

    A failing host does not stop the others; afterwards, if any failed, one `HostsFailed`
    (a `StepError`) names each with its reason, successful results attached.
    """
    hosts = list(hosts)
    report = progress or log_progress
    results: dict[str, T] = {}
    failures: dict[str, BaseException] = {}
    lock = threading.Lock()

    def one(host: Any) -> None:
        name = _name(host)
        report(name, title, "start")
        try:
            value = fn(host)
        except Exception as err:  # collected and reported below, one line per host
            with lock:
                failures[name] = err
            report(name, title, f"failed: {_one_line(err)}")
            return
        with lock:
            results[name] = value
        report(name, title, "ok")

    if hosts:
        with ThreadPoolExecutor(max_workers=max(1, min(limit, len(hosts)))) as pool:
            list(pool.map(one, hosts))
    if failures:
        raise HostsFailed(title, failures, results)
    return {(_name(h)): results[_name(h)] for h in hosts}


class Connections:
    """One SSH connection per host, opened on first use (the bastion's first), all closed
    together. Thread-safe: `run_on_hosts` asks for runners from many threads.
    """

    def __init__(self, inventory: Any, progress: Progress | None = None) -> None:
        self.inventory = inventory
        self.ssh = inventory.ssh
        self.progress = progress
        self._key: paramiko.PKey | None = None
        self._bastion: paramiko.SSHClient | None = None
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._runners: dict[str, SSHRunner] = {}
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _private_key(self) -> paramiko.PKey:
        with self._lock:
            if self._key is None:
                self._key = load_private_key(self.ssh.private_key)
            return self._key

    def _via(self) -> paramiko.Transport | None:
        bastion = self.ssh.bastion
        if bastion is None:
            return None
        key = self._private_key()
        with self._lock:
            transport = self._bastion.get_transport() if self._bastion else None
            if transport is None or not transport.is_active():
                target = Target(bastion.name, bastion.address, bastion.ssh_port,
                                bastion.host_key)
                self._bastion = open_client(target, self.ssh.user, key,
                                            timeout=self.ssh.connect_timeout,
                                            retries=self.ssh.retries)
                transport = self._bastion.get_transport()
            assert transport is not None
            transport.set_keepalive(15)
            return transport

    def bastion_runner(self) -> SSHRunner | None:
        """A runner on the bastion itself (the ssh-access step keeps its keys too)."""
        if self.ssh.bastion is None:
            return None
        self._via()
        assert self._bastion is not None
        return SSHRunner(self.ssh.bastion.name, self._bastion, self.ssh.user,
                         self.ssh.command_timeout)

    def runner(self, host: Any) -> SSHRunner:
        """The runner for a host (an inventory `Host` or its name), connecting if needed."""
        if isinstance(host, str):
            host = self.inventory.host(host)
        with self._lock:
            host_lock = self._host_locks.setdefault(host.name, threading.Lock())
        with host_lock:
            existing = self._runners.get(host.name)
            if existing is not None:
                transport = existing.client.get_transport()
                if transport is not None and transport.is_active():
                    return existing
            via = self._via()
            client = open_client(Target(host.name, host.address, host.ssh_port, host.host_key),
                                 self.ssh.user, self._private_key(),
                                 timeout=self.ssh.connect_timeout, retries=self.ssh.retries,
                                 via=via)
            runner = SSHRunner(host.name, client, self.ssh.user, self.ssh.command_timeout)
            with self._lock:
                self._clients[host.name] = client
                self._runners[host.name] = runner
            return runner

    def forget(self, name: str) -> None:
        """Drop one host's connection (after its sshd restarted, say)."""
        with self._lock:
            client = self._clients.pop(name, None)
            self._runners.pop(name, None)
        if client is not None:
            client.close()

    def run_on_hosts(self, hosts: Iterable[Any], fn: Callable[[Any, SSHRunner], T], *,
                     title: str = "step", limit: int | None = None) -> dict[str, T]:
        """`fn(host, runner)` on every host in parallel (default limit: ssh.parallel)."""
        return run_on_hosts(hosts, lambda h: fn(h, self.runner(h)),
                            limit or self.ssh.parallel, title=title, progress=self.progress)

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
            self._runners.clear()
            bastion, self._bastion = self._bastion, None
        transports = [t for t in (c.get_transport() for c in clients) if t is not None]
        for client in clients:
            client.close()
        # Each host's thread closes its tunnel through the bastion on the way out: let them
        # finish before the bastion goes, or they die on a closed socket.
        deadline = time.monotonic() + 2
        for transport in transports:
            transport.join(max(0.0, deadline - time.monotonic()))
        if bastion is not None:
            bastion.close()
