"""The ssh-tunnel egress service: the API server's HTTP CONNECT proxy to the nodes, over SSH.

Runs on every control-plane host. The kube-apiserver's egress selector (`HTTPConnect` over a
Unix socket) sends `CONNECT <node address>:<port>`; the service answers `200` and the socket
becomes a byte pipe to that port on the node, carried by SSH. Nodes keep their kubelet port
shut to the network; they only need to admit SSH from the control plane.

This file is copied to the hosts as is and run with the system python3 (3.9 or later):
standard library only, never `bootstrap`, plus the OpenSSH client.

    python3 tunnel_service.py --config /etc/mzk/egress/tunnel.json
    python3 tunnel_service.py --config /etc/mzk/egress/tunnel.json --check

`--check` prints one line per node (tunnel up, or down and why) and exits 1 unless every
node is up and the service answers on its socket.

Configuration, one JSON object:
  socket           the Unix socket the API server connects to; created mode 0600, its
                   directory 0700 if missing
  status           a JSON file rewritten (temporary file + rename) whenever a node's state
                   changes: {node: {"state": "up"|"down", "reason", "since": epoch, "address"}}
  identity         this host's tunnel private key (a key of its own per control-plane host)
  known_hosts      the nodes' pinned host keys (written from the inventory); nothing else is
                   trusted, an unknown or different key is refused, never learnt
  control_dir      where the SSH control sockets live (created 0700); sockets are named by
                   node index because a socket path is limited to about 100 bytes
  user             the login user on the nodes
  connect_timeout  seconds allowed to bring a node's SSH connection up, and to open a tunnel
  nodes            [{"name", "address", "ssh_port", "ports": [int, ...]}]: the only places
                   a tunnel may go (the node's own address, on one of its ports)
  optional:
  ssh              the OpenSSH client (default "ssh")
  keepalive        seconds between SSH keepalives (default 5); three missed ones end a master
  backoff_min      first delay before bringing a failed master up again (default 0.5 s),
  backoff_max      doubling up to this (default 30 s); it starts over once a master has
                   stayed up for backoff_max

How a tunnel is carried. One OpenSSH master (`ssh -M -N -S <control socket>`) per node,
started with the service and brought up again with exponential backoff whenever it ends or
cannot connect. For each CONNECT the service speaks OpenSSH's multiplexing protocol
(PROTOCOL.mux, MUX_C_NEW_STDIO_FWD) on the master's control socket and hands it the
accepted socket itself (SCM_RIGHTS); the master opens a `direct-tcpip` channel and copies
bytes between that socket and the channel. No process and no Python copy per tunnel, one SSH
connection per node however many tunnels. The control connection is held for the life of
the tunnel (the master ends the tunnel if it closes) and the master closes it when the
tunnel ends. The `200` is sent only once the node has opened the channel, so a refused
destination gets `502`, not an empty pipe. Allowed ports must carry protocols where the
client speaks first (TLS, HTTP): bytes from a server that speaks first could race the `200`.

The master holds the socket as two descriptors (its read and write side), so a half-close
from the node (end of stream while it still reads) is not passed on by itself: the API
server sees the end when the channel closes, which follows once the destination has closed
its socket (tens of milliseconds here). TLS (close_notify) does not depend on it.

Refusals: not CONNECT 405, malformed 400, not a node address or a port not allowed for that
node 403, the node's master not up 503 (the reason says why: the host key does not match
the pinned key, login refused, unreachable), the node refused the channel 502, no answer
504. One stderr line per tunnel opened or refused, `key=value`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import resource
import signal
import socket
import stat
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------- configuration


class ConfigError(Exception):
    """The configuration file is missing, not JSON or has a bad setting (exit code 2)."""


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    ssh_port: int
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Config:
    socket: str
    status: str
    identity: str
    known_hosts: str
    control_dir: str
    user: str
    connect_timeout: float
    nodes: tuple[Node, ...]
    ssh: str = "ssh"
    keepalive: float = 5.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0


# sun_path holds 108 bytes; ssh binds `<ControlPath>.<16 random characters>` first.
MAX_CONTROL_PATH = 100 - 17
_MISSING = object()


def _setting(raw: dict[str, Any], key: str, kinds: tuple[type, ...], where: str,
             default: Any = _MISSING) -> Any:
    if key not in raw:
        if default is _MISSING:
            raise ConfigError(f"{where}: `{key}` is missing")
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where}: `{key}` must be {names}, not {value!r}")
    return value


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{where}: {value!r} is not a TCP port (1-65535)")
    return value


def host_key(host: str) -> str:
    """One spelling per address, so `10.0.0.1`, `[::1]` and `::0:1` match their node."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


def parse_config(raw: Any, source: str) -> Config:
    """The configuration from parsed JSON; every problem names the setting."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a JSON object")
    paths = {key: _setting(raw, key, (str,), source)
             for key in ("socket", "status", "identity", "known_hosts", "control_dir")}
    nodes = []
    raw_nodes = _setting(raw, "nodes", (list,), source)
    for i, item in enumerate(raw_nodes):
        where = f"{source}: nodes[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be an object")
        ports = _setting(item, "ports", (list,), where)
        nodes.append(Node(
            name=_setting(item, "name", (str,), where),
            address=_setting(item, "address", (str,), where),
            ssh_port=_port(_setting(item, "ssh_port", (int,), where, 22), where),
            ports=tuple(sorted({_port(p, f"{where}.ports") for p in ports}))))
    for attr in ("name", "address"):
        seen: set[str] = set()
        for n in nodes:
            value = getattr(n, attr) if attr == "name" else host_key(n.address)
            if value in seen:
                raise ConfigError(f"{source}: two nodes have the {attr} {value!r}")
            seen.add(value)
    config = Config(
        **paths, nodes=tuple(nodes),
        user=_setting(raw, "user", (str,), source),
        connect_timeout=float(_setting(raw, "connect_timeout", (int, float), source)),
        ssh=_setting(raw, "ssh", (str,), source, "ssh"),
        keepalive=float(_setting(raw, "keepalive", (int, float), source, 5.0)),
        backoff_min=float(_setting(raw, "backoff_min", (int, float), source, 0.5)),
        backoff_max=float(_setting(raw, "backoff_max", (int, float), source, 30.0)))
    longest = control_path(config, max(len(nodes) - 1, 0))
    if len(longest.encode()) > MAX_CONTROL_PATH:
        raise ConfigError(f"{source}: `control_dir` is too long for a socket path "
                          f"({longest!r}); use a shorter directory")
    if config.connect_timeout <= 0 or config.backoff_min <= 0 or config.keepalive < 1:
        raise ConfigError(f"{source}: connect_timeout and backoff_min must be positive, "
                          "keepalive at least 1")
    return config


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON: {e}") from e
    return parse_config(raw, path)


def control_path(config: Config, index: int) -> str:
    return os.path.join(config.control_dir, str(index))


# ----------------------------------------------------------------------------- log, status


def log(event: str, **fields: object) -> None:
    """One line on stderr: `ts=... event=... key=value ...`; values with spaces are quoted."""
    parts = [time.strftime("ts=%Y-%m-%dT%H:%M:%SZ", time.gmtime()), f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        if not text or not text.isprintable() or any(c in text for c in ' "=\\'):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    print(" ".join(parts), file=sys.stderr, flush=True)


class StatusFile:
    """Each node's tunnel state, on disk for `--check` and the bootstrap's `check`."""

    def __init__(self, path: str, nodes: tuple[Node, ...]) -> None:
        self.path = path
        now = int(time.time())
        self.nodes = {n.name: {"state": "down", "reason": "not connected yet", "since": now,
                               "address": n.address} for n in nodes}

    def set(self, node: str, state: str, reason: str) -> None:
        entry = self.nodes[node]
        if entry["state"] == state and entry["reason"] == reason:
            return
        entry.update(state=state, reason=reason, since=int(time.time()))
        self.write()

    def write(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.nodes, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
        except OSError as e:
            log("status", outcome="failed", path=self.path, reason=e.strerror or str(e))


# ----------------------------------------------------------------------------- async socket io


async def _wait_io(sock: socket.socket, write: bool = False) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    fd = sock.fileno()
    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await done
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def read_request_head(sock: socket.socket, limit: int = 8192) -> bytes:
    """The request up to and including the blank line, and not one byte more.

    Whatever follows belongs to the tunnel (the master reads it from the same socket), so the
    head is found by peeking and only its own bytes are taken off the socket.
    """
    taken = b""
    while True:
        await _wait_io(sock)
        try:
            peek = sock.recv(limit - len(taken), socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not peek:
            raise EOFError("closed before the end of the request")
        seen = taken + peek
        end = seen.find(b"\r\n\r\n", max(len(taken) - 3, 0))
        if end >= 0:
            want = end + 4 - len(taken)
            got = sock.recv(want)
            if len(got) != want:
                raise EOFError("request head shrank while read")
            return taken + got
        if len(seen) >= limit:
            raise ValueError(f"request head longer than {limit} bytes")
        taken += sock.recv(len(peek))


def parse_connect(head: bytes) -> tuple[str, str, int]:
    """(method, host, port) from `CONNECT host:port HTTP/1.1`; ValueError if malformed.
    Another method comes back as (method, "", 0), for a 405."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x request line: {line[:100]!r}")
    method, target = parts[0], parts[1]
    if method != "CONNECT":
        return method, "", 0
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        port_text = rest[1:] if sep and rest.startswith(":") else ""
    else:
        host, _, port_text = target.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"not host:port: {target[:100]!r}")
    return method, host, int(port_text)


# ----------------------------------------------------------------------------- mux protocol

MUX_VERSION = 4
MUX_MSG_HELLO = 0x00000001
MUX_C_ALIVE_CHECK = 0x10000004
MUX_C_TERMINATE = 0x10000005
MUX_C_NEW_STDIO_FWD = 0x10000008
MUX_S_OK = 0x80000001
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_ALIVE = 0x80000005
MUX_S_SESSION_OPENED = 0x80000006


class MuxError(Exception):
    """The master refused a request or did not speak its protocol."""


def mux_packet(*fields: int | bytes) -> bytes:
    """A mux message: uint32 length, then uint32s and SSH strings (uint32 length + bytes)."""
    body = b"".join(struct.pack(">I", f) if isinstance(f, int)
                    else struct.pack(">I", len(f)) + f for f in fields)
    return struct.pack(">I", len(body)) + body


class MuxClient:
    """One connection to a master's control socket: one request, or one tunnel's lifetime."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.request_id = 0

    @classmethod
    async def connect(cls, path: str) -> MuxClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, path)
            client = cls(sock)
            await client.send(mux_packet(MUX_MSG_HELLO, MUX_VERSION))
            kind, body = await client.read()
            version = struct.unpack(">I", body[:4])[0] if len(body) >= 4 else -1
            if kind != MUX_MSG_HELLO or version != MUX_VERSION:
                raise MuxError(f"master speaks mux version {version}, not {MUX_VERSION}")
        except BaseException:
            sock.close()
            raise
        return client

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_fd(self, fd: int) -> None:
        """One byte carrying one descriptor, as ssh's mm_receive_fd expects each time."""
        while True:
            try:
                socket.send_fds(self.sock, [b"\0"], [fd])
                return
            except BlockingIOError:
                await _wait_io(self.sock, write=True)

    async def _exactly(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        data = b""
        while len(data) < n:
            chunk = await loop.sock_recv(self.sock, n - len(data))
            if not chunk:
                raise MuxError("the master closed the control connection")
            data += chunk
        return data

    async def read(self) -> tuple[int, bytes]:
        """(message type, body after the type)."""
        size = struct.unpack(">I", await self._exactly(4))[0]
        if not 4 <= size <= 256 * 1024:
            raise MuxError(f"bad mux message length {size}")
        body = await self._exactly(size)
        return struct.unpack(">I", body[:4])[0], body[4:]

    async def _request(self, kind: int, *fields: int | bytes) -> None:
        self.request_id += 1
        await self.send(mux_packet(kind, self.request_id, *fields))

    @staticmethod
    def _reason(body: bytes) -> str:
        if len(body) >= 8:
            size = struct.unpack(">I", body[4:8])[0]
            return body[8:8 + size].decode("utf-8", "replace")
        return "no reason given"

    async def alive(self) -> int:
        """The master's pid (MUX_C_ALIVE_CHECK)."""
        await self._request(MUX_C_ALIVE_CHECK)
        kind, body = await self.read()
        if kind != MUX_S_ALIVE or len(body) < 8:
            raise MuxError(f"alive check answered with 0x{kind:08x}")
        return int(struct.unpack(">I", body[4:8])[0])

    async def terminate(self) -> None:
        await self._request(MUX_C_TERMINATE)
        with contextlib.suppress(MuxError, OSError):
            await self.read()

    async def stdio_forward(self, host: str, port: int, fd: int) -> None:
        """Have the master carry `fd` to host:port (MUX_C_NEW_STDIO_FWD); returns once the
        node has opened the channel. The port is a uint32 (PROTOCOL.mux says string; ssh's
        mux.c reads a uint32)."""
        await self._request(MUX_C_NEW_STDIO_FWD, b"", host.encode(), port)
        await self.send_fd(fd)  # the channel's input
        await self.send_fd(fd)  # and output: the same socket
        kind, body = await self.read()
        if kind == MUX_S_SESSION_OPENED:
            return
        if kind in (MUX_S_FAILURE, MUX_S_PERMISSION_DENIED):
            raise MuxError(self._reason(body))
        raise MuxError(f"stdio forward answered with 0x{kind:08x}")

    async def wait_closed(self) -> None:
        """Until the master closes the connection: the tunnel has ended."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not await loop.sock_recv(self.sock, 4096):
                    return
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


# ----------------------------------------------------------------------------- masters

HOST_KEY_SIGNS = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
                  "host key for", "No matching host key")


def why_master_ended(node: Node, stderr: list[str], returncode: int | None) -> str:
    """A one-line reason from ssh's stderr; a host key problem is always named as such."""
    text = "\n".join(stderr)
    where = f"{node.name} ({node.address}:{node.ssh_port})"
    if any(sign in text for sign in HOST_KEY_SIGNS):
        return f"host key of {where} does not match the pinned key (known_hosts)"
    if "Permission denied" in text:
        return f"login to {where} refused: the tunnel key is not authorized there"
    last = next((line.strip() for line in reversed(stderr) if line.strip()), "")
    if last:
        return f"ssh to {where} ended: {last}"
    if returncode is not None and returncode < 0:
        return f"ssh to {where} ended by signal {-returncode}"
    return f"ssh to {where} exited with code {returncode}"


class Master:
    """The one SSH connection to a node: started with the service and kept up."""

    def __init__(self, node: Node, ctl: str, config: Config, status: StatusFile) -> None:
        self.node = node
        self.ctl = ctl
        self.config = config
        self.status = status
        self.up = False
        self.reason = "not connected yet"
        self.connecting = False
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()

    def command(self) -> list[str]:
        c, n = self.config, self.node
        options = {
            "ControlMaster": "yes", "ControlPersist": "no", "BatchMode": "yes",
            "StrictHostKeyChecking": "yes", "UserKnownHostsFile": c.known_hosts,
            "GlobalKnownHostsFile": "/dev/null", "UpdateHostKeys": "no", "CheckHostIP": "no",
            "IdentityFile": c.identity, "IdentitiesOnly": "yes", "IdentityAgent": "none",
            "ConnectTimeout": str(max(1, round(c.connect_timeout))),
            "ServerAliveInterval": str(max(1, round(c.keepalive))), "ServerAliveCountMax": "3",
            "ForwardAgent": "no", "ForwardX11": "no", "RequestTTY": "no", "LogLevel": "ERROR",
        }
        args = [c.ssh, "-N", "-F", "/dev/null", "-S", self.ctl]
        for key, value in options.items():
            args += ["-o", f"{key}={value}"]
        return [*args, "-p", str(n.ssh_port), "-l", c.user, "--", n.address]

    def _set(self, up: bool, reason: str) -> None:
        self.up, self.reason = up, reason
        self.status.set(self.node.name, "up" if up else "down", reason)
        self._changed.set()
        self._changed = asyncio.Event()

    async def settled(self, timeout: float) -> None:
        """While an attempt to connect is under way, wait for its outcome (bounded)."""
        if self.connecting and not self.up:
            with contextlib.suppress(asyncio.TimeoutError):  # noqa: UP041 (3.9 needs it)
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def run(self) -> None:
        failures = 0
        while not self.stopping:
            began = time.monotonic()
            up_since = await self._attempt()
            if self.stopping:
                break
            if up_since is not None and time.monotonic() - up_since >= self.config.backoff_max:
                failures = 0
            delay = min(self.config.backoff_max, self.config.backoff_min * 2 ** failures)
            delay *= random.uniform(0.9, 1.1)  # noqa: S311 (spread, not secrecy)
            failures = min(failures + 1, 30)
            log("master", node=self.node.name, state="retry", after=f"{delay:.1f}s",
                attempt_s=f"{time.monotonic() - began:.1f}")
            with contextlib.suppress(asyncio.TimeoutError):  # noqa: UP041 (3.9 needs it)
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _attempt(self) -> float | None:
        """Start ssh, wait until its control socket answers, then until it ends.
        Returns when the master came up (monotonic), or None if it never did."""
        await retire_control_socket(self.ctl)
        self.connecting = True
        stderr: deque[str] = deque(maxlen=20)
        up_since = None
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command(), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)
        except OSError as e:
            self.connecting = False
            self._set(False, f"cannot start {self.config.ssh}: {e.strerror or e}")
            log("master", node=self.node.name, state="down", reason=self.reason)
            return None
        proc = self.proc
        reader = asyncio.create_task(self._read_stderr(proc, stderr))
        try:
            pid = await self._wait_until_up(proc)
            if pid is not None:
                up_since = time.monotonic()
                self.connecting = False
                self._set(True, "connected")
                log("master", node=self.node.name, state="up", pid=proc.pid,
                    address=f"{self.node.address}:{self.node.ssh_port}")
                await proc.wait()
            elif proc.returncode is None:
                stderr.append(f"no control socket within {self.wait_limit():.0f}s")
                proc.kill()
                await proc.wait()
        finally:
            self.connecting = False
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            with contextlib.suppress(asyncio.TimeoutError):  # noqa: UP041 (3.9 needs it)
                await asyncio.wait_for(reader, 1.0)
            self.proc = None
        if self.stopping:
            return up_since
        reason = why_master_ended(self.node, list(stderr), proc.returncode)
        self._set(False, reason)
        log("master", node=self.node.name, state="down", reason=reason, code=proc.returncode)
        return up_since

    def wait_limit(self) -> float:
        return self.config.connect_timeout + 5.0

    async def _wait_until_up(self, proc: asyncio.subprocess.Process) -> int | None:
        """The master's pid once its control socket answers; None if ssh ends or is slow.
        ssh opens the control socket only after logging in."""
        deadline = time.monotonic() + self.wait_limit()
        exited = asyncio.ensure_future(proc.wait())
        pause = 0.01
        try:
            while time.monotonic() < deadline and not self.stopping:
                if os.path.exists(self.ctl):
                    with contextlib.suppress(OSError, MuxError):
                        client = await MuxClient.connect(self.ctl)
                        try:
                            return await client.alive()
                        finally:
                            client.close()
                done, _ = await asyncio.wait({exited}, timeout=pause)
                if done:
                    return None
                pause = min(pause * 2, 0.2)
            return None
        finally:
            exited.cancel()

    @staticmethod
    async def _read_stderr(proc: asyncio.subprocess.Process, into: deque[str]) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                into.append(line)

    async def stop(self) -> None:
        self.stopping = True
        self._wake.set()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 3.0)
            except asyncio.TimeoutError:  # noqa: UP041 (3.9 needs it)
                proc.kill()
                await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ctl)
        self.up = False
        self.status.nodes[self.node.name].update(state="down", reason="service stopped",
                                                 since=int(time.time()))


async def retire_control_socket(path: str) -> None:
    """Make way for a new master: a master left over from an earlier run (still answering on
    the socket) is told to terminate, then the socket file is removed."""
    if not os.path.lexists(path):
        return
    with contextlib.suppress(OSError, MuxError):
        client = await asyncio.wait_for(MuxClient.connect(path), 2.0)
        try:
            await asyncio.wait_for(client.terminate(), 2.0)
            log("master", path=path, state="retired", reason="left over from an earlier run")
        finally:
            client.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ----------------------------------------------------------------------------- the proxy

REASONS = {200: "Connection established", 400: "Bad Request", 403: "Forbidden",
           405: "Method Not Allowed", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}
HEAD_TIMEOUT = 10.0


def make_directory(path: str) -> None:
    """Create the directory, and each missing parent, 0700; existing ones are left alone."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    make_directory(os.path.dirname(path))
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)


def make_listener(path: str) -> socket.socket:
    """The API server's Unix socket, mode 0600. A stale socket is replaced; one that still
    answers means another instance runs, which is an error."""
    make_directory(os.path.dirname(path) or ".")
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{path}: exists and is not a socket; remove it or change `socket`")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise ConfigError(f"{path}: another tunnel service answers there; stop it first")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(512)
    sock.setblocking(False)
    return sock


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.status = StatusFile(config.status, config.nodes)
        self.masters = {n.name: Master(n, control_path(config, i), config, self.status)
                        for i, n in enumerate(config.nodes)}
        self.by_address = {host_key(n.address): n for n in config.nodes}
        self.listener: socket.socket | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def start(self) -> None:
        make_directory(self.config.control_dir)
        make_directory(os.path.dirname(self.config.status) or ".")
        self.listener = make_listener(self.config.socket)
        self.status.write()
        self.master_tasks = [asyncio.ensure_future(m.run()) for m in self.masters.values()]
        self.accepting = asyncio.ensure_future(self._accept())
        log("service", state="started", socket=self.config.socket, nodes=len(self.masters),
            pid=os.getpid())

    async def _accept(self) -> None:
        assert self.listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(self.listener)
            except OSError as e:  # EMFILE and the like: keep serving
                log("accept", outcome="failed", reason=e.strerror or str(e))
                await asyncio.sleep(0.1)
                continue
            client.setblocking(False)
            self._spawn(self._tunnel(client))

    async def _answer(self, client: socket.socket, code: int) -> None:
        line = f"HTTP/1.1 {code} {REASONS[code]}\r\n"
        extra = "" if code == 200 else "Content-Length: 0\r\nConnection: close\r\n"
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(client,
                                                          (line + extra + "\r\n").encode())

    async def _tunnel(self, client: socket.socket) -> None:
        """One CONNECT: check it, hand the socket to the node's master, log one line."""
        began = time.monotonic()
        fields: dict[str, object] = {"node": "-", "dest": "-"}
        code, reason, mux = 500, "internal error", None
        try:
            code, reason, mux = await self._decide(client, fields)
        except asyncio.CancelledError:
            code, reason = 503, "service stopping"
            raise
        finally:
            # Logged before the answer: whoever reads the answer finds the line written.
            ms = f"{(time.monotonic() - began) * 1000:.1f}"
            if code == 200:
                log("tunnel", **fields, outcome="open", code=200, ms=ms)
            else:
                log("tunnel", **fields, outcome="refused", code=code, reason=reason, ms=ms)
            # For a 200 the master holds its own copies of the socket; ours goes.
            await self._answer(client, code)
            client.close()
        if mux is not None:
            try:
                await mux.wait_closed()
            finally:
                mux.close()

    async def _decide(self, client: socket.socket,
                      fields: dict[str, object]) -> tuple[int, str, MuxClient | None]:
        """(HTTP status, reason, the tunnel's control connection if it opened)."""
        try:
            head = await asyncio.wait_for(read_request_head(client), HEAD_TIMEOUT)
            method, host, port = parse_connect(head)
        except asyncio.TimeoutError:  # noqa: UP041 (3.9 needs it)
            return 400, f"no complete request within {HEAD_TIMEOUT:.0f}s", None
        except (ValueError, EOFError, OSError) as e:
            return 400, str(e), None
        if method != "CONNECT":
            return 405, f"{method[:20]} is not CONNECT", None
        fields["dest"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        node = self.by_address.get(host_key(host))
        if node is None:
            return 403, "destination is not a node address", None
        fields["node"] = node.name
        if port not in node.ports:
            return 403, f"port {port} is not allowed for {node.name}", None
        master = self.masters[node.name]
        await master.settled(self.config.connect_timeout)
        if not master.up:
            return 503, master.reason, None
        return await self._forward(master, port, client)

    async def _forward(self, master: Master, port: int,
                       client: socket.socket) -> tuple[int, str, MuxClient | None]:
        timeout = self.config.connect_timeout
        try:
            mux = await asyncio.wait_for(MuxClient.connect(master.ctl), timeout)
        except (OSError, MuxError) as e:
            return 503, f"control socket of {master.node.name}: {e}", None
        except asyncio.TimeoutError:  # noqa: UP041 (3.9 needs it)
            return 504, f"control socket of {master.node.name} did not answer", None
        try:
            await asyncio.wait_for(mux.stdio_forward(master.node.address, port,
                                                     client.fileno()), timeout)
        except MuxError as e:
            mux.close()
            return 502, f"{master.node.name} did not open the channel: {e}", None
        except OSError as e:
            mux.close()
            return 503, f"control socket of {master.node.name}: {e}", None
        except asyncio.TimeoutError:  # noqa: UP041 (3.9 needs it)
            mux.close()
            return 504, f"{master.node.name} did not open the channel within {timeout:g}s", None
        return 200, "", mux

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.socket)
        self.accepting.cancel()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*(m.stop() for m in self.masters.values()))
        for task in self.master_tasks:
            task.cancel()
        await asyncio.gather(*self.master_tasks, *self.tasks, return_exceptions=True)
        self.status.write()
        log("service", state="stopped")


def raise_file_limit() -> None:
    """Each tunnel costs a descriptor here and two in its master (which inherits this)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve(config: Config) -> None:
    service = Service(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


# ----------------------------------------------------------------------------- --check


def check(config: Config) -> int:
    """Print each node's tunnel state from the status file; 0 only if all is well."""
    problems = 0
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(config.socket)
        print(f"service: answering on {config.socket}")
    except OSError as e:
        print(f"service: not answering on {config.socket}: {e.strerror or e}")
        problems += 1
    finally:
        probe.close()
    try:
        with open(config.status, encoding="utf-8") as f:
            status = json.load(f)
    except (OSError, ValueError) as e:
        print(f"status: cannot read {config.status}: {e}")
        return 1
    for node in config.nodes:
        entry = status.get(node.name, {})
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.get("since", 0)))
        if entry.get("state") == "up":
            print(f"{node.name}: tunnel up since {since}")
        else:
            problems += 1
            print(f"{node.name}: tunnel down since {since}: "
                  f"{entry.get('reason', 'not in the status file')}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the service's JSON configuration")
    parser.add_argument("--check", action="store_true",
                        help="print each node's tunnel state and exit (1 unless all are up)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.check:
            return check(config)
        raise_file_limit()
        asyncio.run(serve(config))
    except ConfigError as e:
        print(f"tunnel-service: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
