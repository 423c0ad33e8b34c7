"""bootstrap.services against FakeRunner: unit rendering, idempotent ensure, manager choice."""

from __future__ import annotations

import hashlib

import pytest

from bootstrap.errors import StepError
from bootstrap.lab.supervise import parse_unit
from bootstrap.runner import Result
from bootstrap.services import (
    LAB_MARKER,
    SUPERVISOR_PATH,
    LabSupervisor,
    Service,
    SupervisorState,
    SystemdManager,
    manager_for,
    render_unit,
    unit_path,
)
from tests.unit.fakes import FakeRunner

ETCD = Service("etcd", ["/usr/bin/etcd", "--name=cp-a", "--data-dir", "/var/lib/etcd"],
               env={"ETCD_UNSUPPORTED_ARCH": "arm64"}, after=["network"])


@pytest.mark.parametrize("words", [
    ["/bin/echo", "plain", "--flag=a,b"],
    ["sh", "-c", 'echo "$HOME" 100% \\ done'],
    ["x", "two words", "it's", "", "%n$$"],
])
def test_the_supervisor_reads_back_exactly_what_is_rendered(words: list[str]) -> None:
    service = Service("svc", words, env={"A": "b c", "P": "50%", "D": "$X"},
                      working_directory="/var/lib/x y", restart_sec=3)
    spec = parse_unit(render_unit(service))
    assert spec["command_line"] == words
    assert spec["env"] == {"A": "b c", "P": "50%", "D": "$X"}
    assert spec["working_directory"] == "/var/lib/x y"
    assert spec["restart_sec"] == 3.0


def test_rendered_unit_is_a_systemd_unit() -> None:
    text = render_unit(ETCD)
    assert "ExecStart=/usr/bin/etcd --name=cp-a --data-dir /var/lib/etcd\n" in text
    assert "After=network-online.target network.service\n" in text
    assert "Restart=always\n" in text and "WantedBy=multi-user.target" in text
    assert 'Environment=ETCD_UNSUPPORTED_ARCH=arm64\n' in text


def test_service_rejects_newlines_and_bad_names() -> None:
    with pytest.raises(ValueError):
        Service("etcd", ["etcd", "--x=\nExecStartPre=/bin/evil"])
    with pytest.raises(ValueError):
        Service("../etc/passwd", ["true"])
    with pytest.raises(ValueError):
        Service("empty", [])


def test_systemd_ensure_restarts_only_when_the_unit_changed() -> None:
    fake = FakeRunner("cp-a").on("is-enabled", stdout="enabled\nactive\n")
    manager = SystemdManager()
    assert manager.ensure(fake, ETCD) is True
    assert fake.files[unit_path("etcd")].mode == 0o644
    assert fake.commands == ["systemctl daemon-reload", "systemctl enable etcd.service",
                             "systemctl restart etcd.service"]
    fake.commands.clear()
    assert manager.ensure(fake, ETCD) is False
    assert not any("restart" in c or "daemon-reload" in c for c in fake.commands)


def test_systemd_ensure_starts_an_unchanged_but_stopped_unit() -> None:
    fake = FakeRunner("cp-a").on("is-enabled", stdout="enabled\ninactive\n", exit_code=3)
    fake.put(unit_path("etcd"), render_unit(ETCD).encode(), 0o644)
    assert SystemdManager().ensure(fake, ETCD) is True
    assert fake.commands[-1] == "systemctl enable --now etcd.service"


def _supervisor_host(loaded: str | None, pid: int | None = 100) -> FakeRunner:
    fake = FakeRunner("cp-a")
    state = (f"service etcd lab supervisor {pid or '-'} main {pid + 1 if pid else '-'} "
             f"loaded {loaded or '-'}\n")
    fake.on("read -r sp", stdout=state)
    return fake


def test_lab_supervisor_leaves_a_current_service_alone() -> None:
    sha = hashlib.sha256(render_unit(ETCD).encode()).hexdigest()
    fake = _supervisor_host(sha)
    fake.put(unit_path("etcd"), render_unit(ETCD).encode(), 0o644)
    manager = LabSupervisor()
    assert manager.ensure(fake, ETCD) is False
    assert not any("setsid" in c or "kill" in c.split("\n")[0] for c in fake.commands)
    assert fake.files[SUPERVISOR_PATH].mode == 0o755
    assert manager.is_active(fake, "etcd")


def test_lab_supervisor_restarts_when_the_loaded_unit_differs() -> None:
    fake = _supervisor_host("0" * 64)
    assert LabSupervisor().ensure(fake, ETCD) is True
    kills = [c for c in fake.commands if "kill -TERM" in c]
    starts = [c for c in fake.commands if "setsid -f" in c]
    assert len(kills) == 1 and "100" in kills[0]
    assert len(starts) == 1
    assert hashlib.sha256(render_unit(ETCD).encode()).hexdigest() in starts[0]


def test_lab_supervisor_starts_a_service_that_is_not_running() -> None:
    fake = _supervisor_host(None, pid=None)
    manager = LabSupervisor()
    assert manager.ensure(fake, ETCD) is True
    assert not any("kill -TERM" in c for c in fake.commands)
    assert any("setsid -f" in c for c in fake.commands)
    assert not manager.is_active(fake, "etcd")


def test_supervisor_state_parse() -> None:
    state = SupervisorState.parse("supervisor 12\nmain -\nloaded abc\n")
    assert state == SupervisorState(12, None, "abc")
    assert SupervisorState.parse("") == SupervisorState(None, None, None)


def test_manager_for_prefers_the_lab_marker() -> None:
    def host(kind: str) -> FakeRunner:
        return FakeRunner("h").on(LAB_MARKER, handler=lambda c, s: Result(0, kind + "\n", ""))

    assert isinstance(manager_for(host("lab")), LabSupervisor)
    assert isinstance(manager_for(host("systemd")), SystemdManager)
    with pytest.raises(StepError, match="neither systemd"):
        manager_for(host("none"))
