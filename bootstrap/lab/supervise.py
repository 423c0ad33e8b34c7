#!/usr/bin/env python3
"""mzk-supervise: keep one service of a lab host running, as systemd would.

Lab hosts have no systemd, so the bootstrap ships this file to each of them (standard
library only) and starts one detached copy per service. It reads the very unit file that
systemd would read (/etc/systemd/system/<name>.service), runs its ExecStart with its
Environment, restarts it with backoff when it dies, and on SIGTERM stops it and exits.
It records its own pid, the service's pid and the sha256 of the unit it loaded under
/run/mzk, so that `ensure` can tell whether the running definition is the current one.

Usage: mzk-supervise NAME
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time

UNIT_DIR = "/etc/systemd/system"
RUN_DIR = "/run/mzk"
LOG_DIR = "/var/lib/mzk/log"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _unescape(word: str, dollars: bool) -> str:
    word = word.replace("%%", "%")
    return word.replace("$$", "$") if dollars else word


def parse_unit(text: str) -> dict:
    """The parts of a unit file we render: ExecStart, Environment, WorkingDirectory,
    RestartSec. Quoting as systemd reads it for the forms the renderer writes."""
    spec: dict = {"command_line": [], "env": {}, "working_directory": "/",
                  "restart_sec": 2.0}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key == "ExecStart":
            spec["command_line"] = [_unescape(w, True) for w in shlex.split(value)]
        elif key == "Environment":
            for word in shlex.split(value):
                name, _, val = _unescape(word, False).partition("=")
                spec["env"][name] = val
        elif key == "WorkingDirectory":
            spec["working_directory"] = _unescape(value, False)
        elif key == "RestartSec":
            spec["restart_sec"] = float(value)
    return spec


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    name = argv[1]
    with open(os.path.join(UNIT_DIR, f"{name}.service"), "rb") as f:
        unit = f.read()
    spec = parse_unit(unit.decode())
    if not spec["command_line"]:
        print(f"{name}: the unit has no ExecStart", file=sys.stderr)
        return 2
    os.makedirs(RUN_DIR, exist_ok=True)
    os.makedirs(LOG_DIR, exist_ok=True)
    own_pid = os.path.join(RUN_DIR, f"{name}.supervisor.pid")
    main_pid = os.path.join(RUN_DIR, f"{name}.pid")
    _write(own_pid, f"{os.getpid()}\n")
    _write(os.path.join(RUN_DIR, f"{name}.unit-sha256"), hashlib.sha256(unit).hexdigest() + "\n")
    env = {"PATH": BASE_PATH, **spec["env"]}
    state: dict = {"stopping": False, "child": None}

    def on_term(_signum: int, _frame: object) -> None:
        state["stopping"] = True
        child = state["child"]
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    delay = spec["restart_sec"] / 2
    while not state["stopping"]:
        started = time.monotonic()
        with open(os.path.join(LOG_DIR, f"{name}.log"), "ab") as log:
            try:
                child = subprocess.Popen(spec["command_line"], env=env,  # noqa: S603
                                         cwd=spec["working_directory"],
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
            except OSError as err:
                log.write(f"mzk-supervise: cannot start {name}: {err}\n".encode())
                child = None
        if child is not None:
            state["child"] = child
            _write(main_pid, f"{child.pid}\n")
            if state["stopping"]:
                child.terminate()
            code = child.wait()
            print(f"mzk-supervise: {name} exited with {code}", file=sys.stderr, flush=True)
        if state["stopping"]:
            break
        # Backoff: RestartSec after a long run, doubling up to 30s while it keeps dying.
        long_run = time.monotonic() - started > 10
        delay = spec["restart_sec"] if long_run else min(delay * 2, 30)
        end = time.monotonic() + delay
        while not state["stopping"] and time.monotonic() < end:
            time.sleep(0.1)
    child = state["child"]
    if child is not None and child.poll() is None:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    for path in (main_pid, own_pid):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
