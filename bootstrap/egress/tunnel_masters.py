"""The tunnel service's SSH masters: one OpenSSH connection per node, started with the
service, brought up again with backoff when it ends, and a one-line reason when it is down.

Shipped to the control-plane hosts beside the tunnel service (its COMPANIONS) and run by their
python3 (3.9+): standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import deque

try:  # in the project
    from bootstrap.egress.tunnel_config import Config, Node
    from bootstrap.egress.tunnel_mux import MuxClient, MuxError
    from bootstrap.egress.tunnel_status import StatusFile, log
except ImportError:  # on a host: shipped beside mzk-egress-tunnel
    from tunnel_config import Config, Node  # type: ignore[no-redef]
    from tunnel_mux import MuxClient, MuxError  # type: ignore[no-redef]
    from tunnel_status import StatusFile, log  # type: ignore[no-redef]

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
