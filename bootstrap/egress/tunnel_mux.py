"""OpenSSH's connection multiplexing protocol (PROTOCOL.mux), the client side the tunnel
service needs: hello, alive check, terminate, and a stdio forward that hands the master an
accepted socket (SCM_RIGHTS) to carry to a node. Kept apart because it is a wire protocol
with rules of its own (message layout, descriptor passing) and nothing else.

Shipped to the control-plane hosts beside the tunnel service (its COMPANIONS) and run by their
python3 (3.9+): standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


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
