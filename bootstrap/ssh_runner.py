"""`SSHRunner`: the `Runner` over one open SSH connection (`sudo -n` when not root).

Its own module because running a command over a paramiko channel has details of its own
(stdin and EOF ordering, output after the exit status, timeouts, a lost connection) that
neither connecting (bootstrap.ssh) nor the steps need to see.
"""

from __future__ import annotations

import shlex
import time

import paramiko

from bootstrap.errors import HostConnectionError, StepError
from bootstrap.runner import Result, _tail, command_failed, put_script, same_file, stat_script

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
