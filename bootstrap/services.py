"""Long-running services on hosts: one definition, two keepers.

A step describes a service once (`Service`) and calls `ensure`. Both managers write the same
systemd unit to /etc/systemd/system/<name>.service through `runner.put`, so the definition
on a lab host is byte for byte what a real host gets; they differ only in who keeps the
process alive:

- `SystemdManager` (real hosts): daemon-reload, enable --now, restart when the unit changed.
- `LabSupervisor` (lab hosts, no systemd): a small detached supervisor per service
  (bootstrap/lab/supervise.py, shipped to /var/lib/mzk/bin/mzk-supervise) reads that unit,
  runs ExecStart and restarts it with backoff; it is restarted only when the unit it loaded
  (sha256 under /run/mzk) differs from the unit on disk.

`manager_for(runner)` picks one: the lab writes the marker /etc/mzk/lab-host on each of its
hosts; otherwise a host booted with systemd has /run/systemd/system.
`ensure` with an unchanged definition changes nothing, restarts nothing and returns False.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bootstrap.errors import StepError
from bootstrap.runner import Runner

UNIT_DIR = "/etc/systemd/system"
LAB_MARKER = "/etc/mzk/lab-host"
SUPERVISOR_PATH = "/var/lib/mzk/bin/mzk-supervise"
RUN_DIR = "/run/mzk"
SUPERVISOR_SOURCE = (Path(__file__).parent / "lab" / "supervise.py").read_bytes()

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.@-]*$")
_BARE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


@dataclass(frozen=True)
class Service:
    """A long-running process: what systemd's ExecStart/Environment/After would say."""

    name: str
    command_line: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    after: Sequence[str] = ()
    description: str = ""
    working_directory: str = "/"
    restart_sec: float = 1.0
    # containerd: a restart must not kill the containers it started (their shims carry
    # on), and systemd must hand it the cgroup subtree.
    keep_children: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"service name {self.name!r}: use letters, digits, '-', '_', '.'")
        if not self.command_line:
            raise ValueError(f"service {self.name}: empty command line")
        for word in (*self.command_line, *self.env.keys(), *self.env.values()):
            if "\n" in word or "\r" in word:
                raise ValueError(f"service {self.name}: a newline in {word!r}")
        object.__setattr__(self, "command_line", tuple(self.command_line))
        object.__setattr__(self, "after", tuple(self.after))


def _quote(word: str, dollars: bool) -> str:
    """One word as systemd reads it: `%` and (in ExecStart) `$` doubled, quoted if needed."""
    word = word.replace("%", "%%")
    if dollars:
        word = word.replace("$", "$$")
    if word and _BARE.match(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_path(name: str) -> str:
    return f"{UNIT_DIR}/{name}.service"


def inputs_digest(binary_id: str, command: Sequence[str], contents: Mapping[str, bytes]) -> str:
    """`MZK_INPUTS` of a unit: its binary's identity and the digest of every file (of
    `contents`) its command line names, so a new certificate or configuration changes the
    unit, and a changed unit restarts its service."""
    named = {part for word in command for part in re.split(r"[=,#;]", word)}
    digest = hashlib.sha256(binary_id.encode())
    for path in sorted(p for p in contents if p in named):
        digest.update(f"\n{path} {hashlib.sha256(contents[path]).hexdigest()}".encode())
    return digest.hexdigest()


def render_unit(service: Service) -> str:
    """The systemd unit for a service; the lab supervisor reads the same file."""
    after = " ".join(["network-online.target", *(
        a if "." in a else f"{a}.service" for a in service.after)])
    lines = [
        "# Written by multizone-k8s bootstrap; local edits are overwritten.",
        "[Unit]",
        f"Description={service.description or service.name}",
        f"After={after}",
        "Wants=network-online.target",
        "",
        "[Service]",
        *(f"Environment={_quote(f'{k}={v}', dollars=False)}"
          for k, v in sorted(service.env.items())),
        # Taken literally by systemd (no quotes; spaces allowed), only `%` is special.
        f"WorkingDirectory={service.working_directory.replace('%', '%%')}",
        "ExecStart=" + " ".join(_quote(w, dollars=True) for w in service.command_line),
        "Restart=always",
        f"RestartSec={service.restart_sec:g}",
        *(["KillMode=process", "Delegate=yes"] if service.keep_children else []),
        "LimitNOFILE=65536",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


class ServiceManager(Protocol):
    def ensure(self, runner: Runner, service: Service) -> bool: ...

    def restart(self, runner: Runner, name: str) -> None: ...

    def stop(self, runner: Runner, name: str) -> None: ...

    def remove(self, runner: Runner, name: str) -> None: ...

    def is_active(self, runner: Runner, name: str) -> bool: ...


class SystemdManager:
    """Hosts booted with systemd."""

    def ensure(self, runner: Runner, service: Service) -> bool:
        unit = f"{service.name}.service"
        changed = runner.put(unit_path(service.name), render_unit(service).encode(), 0o644)
        if changed:
            runner.run("systemctl daemon-reload")
            runner.run(f"systemctl enable {shlex.quote(unit)}")
            runner.run(f"systemctl restart {shlex.quote(unit)}")
            return True
        state = runner.run(f"systemctl is-enabled {shlex.quote(unit)}; "
                           f"systemctl is-active {shlex.quote(unit)}", check=False).stdout.split()
        if state[:2] == ["enabled", "active"]:
            return False
        runner.run(f"systemctl enable --now {shlex.quote(unit)}")
        return True

    def restart(self, runner: Runner, name: str) -> None:
        runner.run(f"systemctl restart {shlex.quote(name + '.service')}")

    def stop(self, runner: Runner, name: str) -> None:
        runner.run(f"systemctl stop {shlex.quote(name + '.service')}")

    def remove(self, runner: Runner, name: str) -> None:
        """Stop a service for good: disabled, its unit gone."""
        self.stop(runner, name)
        runner.run(f"systemctl disable --quiet {shlex.quote(name + '.service')}; "
                   f"rm -f {shlex.quote(unit_path(name))}")

    def is_active(self, runner: Runner, name: str) -> bool:
        return runner.run(f"systemctl is-active --quiet {shlex.quote(name + '.service')}",
                          check=False).exit_code == 0


@dataclass(frozen=True)
class SupervisorState:
    """Parsed output of the status script: pids (None if not running) and loaded unit."""

    supervisor_pid: int | None
    main_pid: int | None
    loaded_sha256: str | None

    @classmethod
    def parse(cls, text: str) -> SupervisorState:
        fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)

        def num(key: str) -> int | None:
            value = fields.get(key, "-").strip()
            return int(value) if value.isdigit() else None

        loaded = fields.get("loaded", "-").strip()
        return cls(num("supervisor"), num("main"), None if loaded == "-" else loaded)


class LabSupervisor:
    """Lab hosts: a detached `mzk-supervise` per service keeps the process alive."""

    start_timeout = 10.0

    def state(self, runner: Runner, name: str) -> SupervisorState:
        out = runner.run(status_script([name])).stdout
        return lab_states(out).get(name, SupervisorState(None, None, None))

    def ensure(self, runner: Runner, service: Service) -> bool:
        unit = render_unit(service).encode()
        runner.put(SUPERVISOR_PATH, SUPERVISOR_SOURCE, 0o755)
        wrote_unit = runner.put(unit_path(service.name), unit, 0o644)
        state = self.state(runner, service.name)
        current = state.supervisor_pid is not None \
            and state.loaded_sha256 == hashlib.sha256(unit).hexdigest()
        if current:
            return wrote_unit
        if state.supervisor_pid is not None:
            self.stop(runner, service.name)
        self._start(runner, service.name, hashlib.sha256(unit).hexdigest())
        return True

    def _start(self, runner: Runner, name: str, sha: str) -> None:
        n = shlex.quote(name)
        steps = int(self.start_timeout * 10)
        runner.run(
            f"mkdir -p {RUN_DIR} /var/lib/mzk/log && "
            f"setsid -f {SUPERVISOR_PATH} {n} </dev/null "
            f">>/var/lib/mzk/log/{n}.supervisor.log 2>&1\n"
            f"for i in $(seq 1 {steps}); do\n"
            f"  [ \"$(cat {RUN_DIR}/{n}.unit-sha256 2>/dev/null)\" = {sha} ] && "
            f"[ -s {RUN_DIR}/{n}.pid ] && exit 0\n"
            "  sleep 0.1\ndone\n"
            f"echo 'supervisor did not start; see /var/lib/mzk/log/{name}.supervisor.log' >&2\n"
            f"tail -n 5 /var/lib/mzk/log/{n}.supervisor.log >&2; exit 1")

    def restart(self, runner: Runner, name: str) -> None:
        unit = runner.read(unit_path(name))
        if unit is None:
            raise StepError(f"{runner.name}: no unit {unit_path(name)} to restart; "
                            "ensure the service first")
        self.stop(runner, name)
        self._start(runner, name, hashlib.sha256(unit).hexdigest())

    def stop(self, runner: Runner, name: str) -> None:
        state = self.state(runner, name)
        pids = " ".join(str(p) for p in (state.supervisor_pid,) if p)
        main = str(state.main_pid or "")
        n = shlex.quote(name)
        runner.run(
            f"for p in {pids}; do kill -TERM $p 2>/dev/null; done\n"
            "for i in $(seq 1 150); do\n"
            f"  alive=; for p in {pids} {main}; do kill -0 $p 2>/dev/null && alive=1; done\n"
            "  [ -z \"$alive\" ] && break; sleep 0.1\ndone\n"
            f"for p in {pids} {main}; do kill -KILL $p 2>/dev/null; done\n"
            f"rm -f {RUN_DIR}/{n}.pid {RUN_DIR}/{n}.supervisor.pid {RUN_DIR}/{n}.unit-sha256\n"
            "true")

    def remove(self, runner: Runner, name: str) -> None:
        """Stop a service for good: its supervisor gone, its unit gone."""
        self.stop(runner, name)
        runner.run(f"rm -f {shlex.quote(unit_path(name))}")

    def is_active(self, runner: Runner, name: str) -> bool:
        state = self.state(runner, name)
        return state.supervisor_pid is not None and state.main_pid is not None


@dataclass(frozen=True)
class ServiceStatus:
    """What one round trip learns of a service, whichever keeper runs it: whether it runs,
    and the sha256 of the unit it runs with (None when not running)."""

    running: bool
    loaded_sha256: str | None

    def current(self, unit: bytes) -> bool:
        return self.running and self.loaded_sha256 == hashlib.sha256(unit).hexdigest()


def status_script(names: Sequence[str]) -> str:
    """Shell printing `service NAME ...` per service (see `parse_status`), for the lab
    supervisor and for systemd alike, so the facts step can ask in its batch. The lab part
    uses shell built-ins only (it runs on every host of a no-op apply): `read` of a
    /proc/<pid>/cmdline drops its NULs, so the supervisor's command line ends in
    `mzk-supervise<name>`."""
    lines = [f"if [ -f {LAB_MARKER} ]; then"]
    for name in names:
        d, n = f"{RUN_DIR}/{name}", name
        lines += [
            f"sp=; mp=; ld=; cl=; read -r sp < {d}.supervisor.pid; read -r mp < {d}.pid; "
            f"read -r ld < {d}.unit-sha256",
            '[ -n "$sp" ] && read -r cl < /proc/"$sp"/cmdline',
            f'case "$cl" in *mzk-supervise{n}) ;; *) sp=;; esac',
            '[ -n "$sp" ] && [ -n "$mp" ] && kill -0 "$mp" 2>/dev/null || mp=',
            f'echo "service {n} lab supervisor ${{sp:--}} main ${{mp:--}} loaded ${{ld:--}}"',
        ]
    lines.append("else")
    for name in names:
        unit = shlex.quote(unit_path(name))
        q = shlex.quote(f"{name}.service")
        lines.append(f"if systemctl is-enabled --quiet {q} 2>/dev/null && "
                     f"systemctl is-active --quiet {q}; then echo \"service {name} systemd "
                     f"$(sha256sum < {unit} | cut -d' ' -f1)\"; "
                     f"else echo \"service {name} systemd -\"; fi")
    lines.append("fi")
    return "{\n" + "\n".join(lines) + "\n} 2>/dev/null\n"


def lab_states(text: str) -> dict[str, SupervisorState]:
    """The lab lines of `status_script`'s output, with the supervisor's pids."""
    found = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "service" and words[2] == "lab":
            found[words[1]] = SupervisorState.parse("\n".join(
                " ".join(words[i:i + 2]) for i in range(3, len(words) - 1, 2)))
    return found


def parse_status(text: str) -> dict[str, ServiceStatus]:
    """The `service ...` lines of `status_script`'s output, whichever keeper."""
    found: dict[str, ServiceStatus] = {}
    for name, state in lab_states(text).items():
        running = state.supervisor_pid is not None and state.main_pid is not None
        found[name] = ServiceStatus(running, state.loaded_sha256 if running else None)
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "service" and words[2] == "systemd":
            sha = words[3] if len(words) > 3 and words[3] != "-" else None
            found[words[1]] = ServiceStatus(sha is not None, sha)
    return found


def change_from_facts(service: Service, unit_state: str | None,
                      status: ServiceStatus | None) -> str | None:
    """What `ensure` would do, decided from facts already gathered (the unit file's state
    and the keeper's status), or None: no round trip for a converged host."""
    unit = render_unit(service).encode()
    if unit_state != f"{hashlib.sha256(unit).hexdigest()} 644 root root":
        return f"write {unit_path(service.name)} and (re)start {service.name}"
    if status is None or not status.current(unit):
        return f"(re)start {service.name} (not running the current unit)"
    return None


def pending_change(runner: Runner, service: Service) -> str | None:
    """What `ensure` would do, as one line, or None: the single decision behind both
    `apply` (which then calls `ensure`) and `plan` (which only reports it). One round trip:
    the unit file's state and the keeper's state together."""
    from bootstrap.hostfiles import parse_states, state_script  # hostfiles imports ssh only

    unit = render_unit(service).encode()
    path = unit_path(service.name)
    marker = "MZK_SERVICE_STATUS"
    out = runner.run("sh -s", stdin=(state_script([path]) + f"echo {marker}\n"
                                     + status_script([service.name])).encode()).stdout
    files, _, status = out.partition(f"{marker}\n")
    on_disk = parse_states([path], files)[path]
    if on_disk != f"{hashlib.sha256(unit).hexdigest()} 644 root root":
        return f"write {path} and (re)start {service.name}"
    found = parse_status(status).get(service.name, ServiceStatus(False, None))
    if not found.current(unit):
        return f"(re)start {service.name} (not running the current unit)"
    return None


def manager_from(host: str, lab: bool, systemd: bool) -> ServiceManager:
    """The lab marker wins; else systemd if the host was booted with it; else an error."""
    if lab:
        return LabSupervisor()
    if systemd:
        return SystemdManager()
    raise StepError(f"{host}: neither systemd (/run/systemd/system) nor the lab marker "
                    f"({LAB_MARKER}) found; boot the host with systemd")


def manager_for(runner: Runner) -> ServiceManager:
    """Ask the host which manager applies (the facts step asks the same in its batch)."""
    kind = runner.run(f"if [ -f {LAB_MARKER} ]; then echo lab; "
                      "elif [ -d /run/systemd/system ]; then echo systemd; "
                      "else echo none; fi").stdout.strip()
    return manager_from(runner.name, kind == "lab", kind == "systemd")
