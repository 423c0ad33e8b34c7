"""SSH to the hosts of an inventory: pinned host keys, key-only login, an optional bastion.

`open_client` connects to one host (through the bastion's transport if there is one), checks
its pinned key (bootstrap.ssh_host_keys) and retries only transient failures.
`Connections` opens one connection per host, the bastion's first, and hands out an
`SSHRunner` (bootstrap.ssh_runner) per host; its `run_on_hosts` fans a function out over
hosts (bootstrap.host_fanout). What a runner may do is bootstrap.runner.

Host keys come only from the inventory: the user's known_hosts is never read and an unknown
or different key is refused with both fingerprints, never added.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import paramiko

from bootstrap.errors import HostConnectionError
from bootstrap.host_fanout import Progress, run_on_hosts
from bootstrap.ssh_host_keys import RejectUnpinnedKey, mismatch_message, pinned_host_keys
from bootstrap.ssh_runner import SSHRunner

log = logging.getLogger("bootstrap.ssh")

T = TypeVar("T")


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
