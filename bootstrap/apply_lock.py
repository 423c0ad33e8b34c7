"""One apply at a time per cluster: a lock on every control-plane host, held for the run.

The lock is a `flock` taken by a shell that lives as long as an SSH session of ours: the
kernel releases it when that shell ends, whatever ends it. The shell ends when we close
the session (the run is over), when our connection dies (the client crashed), or when our
heartbeat (a byte every HEARTBEAT_S) stays away for SILENCE_S (a client that hangs or a
network that parts): a lock can never outlive its holder by more than SILENCE_S. A busy
lock is refused with one line naming who holds it and since when.

Every control-plane host is locked, non-blocking and side by side; a run that finds any
of them busy releases what it took and stops, before anything changed. Two runs that race
may both stop; neither acts.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import shlex
import socket
import threading
import time

import paramiko

from bootstrap.errors import LockBusy
from bootstrap.ssh_runner import CONNECTION_LOST, SSHRunner, _send_eof_in_order

LOCK_FILE = "/var/lib/mzk/apply.lock"
OWNER_FILE = "/var/lib/mzk/apply.owner"
HEARTBEAT_S = 20.0
SILENCE_S = 60


def owner_line() -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} since {now}"


def script(owner: str, silence: float = SILENCE_S) -> str:
    """Take the lock or say who has it; then hold it while bytes keep arriving."""
    q = shlex.quote
    return (f"mkdir -p {q(os.path.dirname(LOCK_FILE))} && exec 9>>{q(LOCK_FILE)} || exit 1\n"
            f"if ! flock -n 9; then echo \"busy $(cat {q(OWNER_FILE)} 2>/dev/null)\"; "
            "exit 75; fi\n"
            f"printf '%s\\n' {q(owner)} > {q(OWNER_FILE)}\n"
            "echo locked\n"
            f"while [ \"$(timeout {silence:g} head -c 1 | wc -c)\" = 1 ]; do :; done\n"
            f"rm -f {q(OWNER_FILE)}\n")


class HeldLock:
    """The lock on one host, held by an open session until `release`."""

    def __init__(self, runner: SSHRunner, owner: str, silence: float = SILENCE_S,
                 heartbeat: float | None = HEARTBEAT_S, timeout: float = 20.0) -> None:
        self.name = runner.name
        transport = runner.client.get_transport()
        if transport is None or not transport.is_active():
            raise LockBusy(f"{runner.name}: no connection to take the apply lock on")
        self.chan = transport.open_session(timeout=timeout)
        self.chan.settimeout(timeout)
        self.chan.exec_command(runner._wrap(script(owner, silence)))
        answer = self._first_line(timeout)
        if answer != "locked":
            self.chan.close()
            holder = answer.removeprefix("busy").strip() or "an unknown holder"
            raise LockBusy(f"{runner.name}: another apply holds the cluster's lock "
                           f"({holder}); wait for it to finish (a holder that died releases "
                           f"it within {silence:g} s)")
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if heartbeat:
            self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat,),
                                          daemon=True)
            self._beat.start()

    def _first_line(self, timeout: float) -> str:
        data = bytearray()
        deadline = time.monotonic() + timeout
        while b"\n" not in data and time.monotonic() < deadline:
            if self.chan.recv_ready():
                data += self.chan.recv(4096)
            elif self.chan.exit_status_ready() and not self.chan.recv_ready():
                break
            else:
                time.sleep(0.005)
        return data.decode("utf-8", "replace").split("\n", 1)[0].strip()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.chan.send(b".")
            except CONNECTION_LOST:
                return

    def release(self) -> None:
        """End the holding shell (EOF on its input) and close the session (once)."""
        if self.chan.closed:
            return
        if self._beat is not None:
            self._stop.set()
        try:
            _send_eof_in_order(self.chan)
            deadline = time.monotonic() + 5
            while not self.chan.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.005)
        except (*CONNECTION_LOST, paramiko.SSHException):
            pass
        finally:
            self.chan.close()


def acquire(runners: list[SSHRunner], owner: str | None = None) -> list[HeldLock]:
    """Lock every host side by side; all or nothing (LockBusy names the busy hosts)."""
    owner = owner or owner_line()
    held: list[HeldLock] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(runner: SSHRunner) -> None:
        try:
            taken = HeldLock(runner, owner)
        except LockBusy as err:
            with lock:
                errors.append(str(err))
            return
        except (*CONNECTION_LOST, paramiko.SSHException):
            return  # an unreachable host is named by the steps; it cannot be changed either
        with lock:
            held.append(taken)

    threads = [threading.Thread(target=one, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for taken in held:
            taken.release()
        raise LockBusy(sorted(errors)[0] + (f" (and {len(errors) - 1} more host(s))"
                                            if len(errors) > 1 else ""))
    return held
