"""The tunnel service's proxy: the API server's Unix socket, each CONNECT read, checked
against the nodes' addresses and ports, and handed to the node's master (or refused with the
status and reason the service documents).

Shipped to the control-plane hosts beside the tunnel service (its COMPANIONS) and run by their
python3 (3.9+): standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import time
from typing import Any

try:  # in the project
    from bootstrap.egress.tunnel_config import Config, ConfigError, control_path, host_key
    from bootstrap.egress.tunnel_masters import Master
    from bootstrap.egress.tunnel_mux import MuxClient, MuxError, _wait_io
    from bootstrap.egress.tunnel_status import StatusFile, log
except ImportError:  # on a host: shipped beside mzk-egress-tunnel
    from tunnel_config import Config, ConfigError, control_path, host_key  # type: ignore[no-redef]
    from tunnel_masters import Master  # type: ignore[no-redef]
    from tunnel_mux import MuxClient, MuxError, _wait_io  # type: ignore[no-redef]
    from tunnel_status import StatusFile, log  # type: ignore[no-redef]


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
