"""A real lab for the whole session: brought up once in a temp dir, always brought down."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootstrap import k8s_bin
from bootstrap.apply_command import check, execute
from bootstrap.engine import Report
from bootstrap.inventory import Inventory, load
from bootstrap.lab import build, hosts
from bootstrap.lab.layout import Layout
from bootstrap.runner import Result
from bootstrap.ssh import Connections


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    for tool in ("ip", "unshare", "/usr/sbin/sshd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def require_k8s_binaries() -> None:
    """Skip, with one line naming MZK_K8S_BIN_DIR, a test whose apply starts the control
    plane where no Kubernetes binaries are given (bin/mzk sets it from ../shared/k8s-bin)."""
    if k8s_bin.resolve_dir(None) is None:
        pytest.skip(f"no Kubernetes binaries: set {k8s_bin.ENV} (bin/mzk test unpacks "
                    "../shared/k8s-bin and sets it)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item, so fixtures can see whether it failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@dataclass
class Lab:
    dir: Path
    layout: Layout
    inventory: Inventory


@contextmanager
def running_lab(factory: pytest.TempPathFactory, name: str, workers: int) -> Iterator[Lab]:
    """A lab in a fresh temp dir, brought down whatever happens."""
    lab_dir = factory.mktemp(name) / "lab"
    try:
        layout = build.up(lab_dir, workers=workers, say=lambda _m: None)
        yield Lab(lab_dir, layout, load(lab_dir / "inventory.yaml"))
    finally:
        build.down(lab_dir, say=lambda _m: None)


def netns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                         check=True).stdout
    return [int(p) for p in out.split()]


def kill_host(lab: Lab, host: str) -> None:
    """SIGKILL every process of a lab host (etcd, supervisors, the control plane, sshd),
    as if the machine died; returns once none is left."""
    netns = lab.layout.host(host).netns
    hosts.kill_namespace(netns)
    assert not netns_pids(netns)


def netns_commands(netns: str) -> dict[int, str]:
    """pid -> command name of every process in a namespace; one that exits while it is
    being listed is not running, and is left out."""
    found = {}
    for pid in netns_pids(netns):
        try:
            found[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
    return found


def sshd_pids(netns: str) -> list[int]:
    return [p for p, name in netns_commands(netns).items() if name == "sshd"]


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    with running_lab(tmp_path_factory, "lab", workers=2) as running:
        yield running


def apply(lab: Lab, inv: Inventory | None = None, dry_run: bool = False) -> Report:
    """Every apply of these tests is planned first: the plan's lines must be the apply's
    (one code path; issue: plan and apply disagreeing)."""
    inventory = inv or lab.inventory
    planned = execute(inventory, lab.dir / "pki", dry_run=True)
    if dry_run:
        return planned
    report = execute(inventory, lab.dir / "pki", dry_run=False)
    assert report.lines() == planned.lines(), (planned.lines(), report.lines())
    return report


def on(lab: Lab, host: str, command: str, check: bool = True, stdin: bytes | None = None
       ) -> Result:
    with Connections(lab.inventory) as conns:
        return conns.runner(host).run(command, check=check, stdin=stdin)


def KUBECTL() -> str:  # noqa: N802 - reads like the constant it is, once binaries are given
    """The kubectl of MZK_K8S_BIN_DIR (lab hosts see this machine's file system)."""
    return str(Path(str(k8s_bin.resolve_dir(None))) / "kubectl")


def kubectl(lab: Lab, host: str, args: str, kubeconfig: str = "/etc/kubernetes/admin.conf",
            check: bool = True, stdin: bytes | None = None) -> Result:
    tool = KUBECTL()
    return on(lab, host, f"{tool} --kubeconfig={kubeconfig} --request-timeout=10s {args}",
              check=check, stdin=stdin)


def in_host(lab: Lab, host: str, argv: list[str], timeout: float = 10
            ) -> subprocess.CompletedProcess[str]:
    """Run a command from this machine inside a lab host's network and mount namespaces
    (its /etc/hosts names the endpoints), as a client in that host's zone would."""
    pid = json.loads((lab.dir / "lab-state.json").read_text())["pids"][host]
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def until(predicate, limit: float, what: str = "") -> float:  # type: ignore[no-untyped-def]
    """Seconds until `predicate()` held (polled), failing past `limit`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < limit, f"not within {limit} s: {what}"
        time.sleep(0.2)
    return time.monotonic() - start


def check_lines(lab: Lab) -> dict[str, str]:
    """`check`'s line per host, for the inventory the tests apply."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        check(lab.inventory, kubectl=KUBECTL())
    return {line.split(":")[0]: line for line in out.getvalue().splitlines()}
