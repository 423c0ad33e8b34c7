"""The apply engine: an action is one ordered list of steps; `plan` is the same code with
effects described instead of performed.

Each step has a title, the hosts it concerns, and a `run(ctx)` that checks the host and does
only what closes the gap, returning a line for every change it made (or, in a dry run,
would make). A step that needs the whole cluster at once (etcd membership) sets
`together=True` and gets every host's context in one call. Hosts of one step run in
parallel. A host that fails a step is left out of the steps after it while the other
hosts carry on; at the end one `ActionFailed` names every failed host and why, with the
report of what did change attached.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bootstrap.errors import ConfigError, LockBusy, StepError
from bootstrap.host_fanout import HostsFailed, run_on_hosts
from bootstrap.inventory import Host, Inventory
from bootstrap.runner import Runner


@dataclass
class HostContext:
    """What a step sees of one host: its runner, its facts, and where changes are noted."""

    host: Host
    runner: Runner
    inventory: Inventory
    dry_run: bool
    shared: dict[str, Any]  # action-wide values (the PKI result, say), read-only to steps
    facts: dict[str, Any] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)

    def note(self, change: str) -> None:
        self.changes.append(change)

    @property
    def name(self) -> str:
        return self.host.name


StepRun = Callable[[HostContext], None]
GroupRun = Callable[[list[HostContext]], None]


@dataclass(frozen=True)
class Step:
    title: str
    hosts: Callable[[Inventory], Iterable[Host]]
    run: StepRun | None = None
    run_together: GroupRun | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.run_together is None):
            raise ValueError(f"step {self.title}: give exactly one of run, run_together")


def all_hosts(inventory: Inventory) -> Iterable[Host]:
    return inventory.hosts


@dataclass
class Report:
    """Per host, the changes made (or planned), in step order."""

    changes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def add(self, host: str, step: str, change: str) -> None:
        self.changes.setdefault(host, []).append((step, change))

    @property
    def changed(self) -> bool:
        return any(self.changes.values())

    def lines(self) -> list[str]:
        return [f"{host}: {step}: {change}" for host in sorted(self.changes)
                for step, change in self.changes[host]]


Progress = Callable[[str, str, str], None]


class ActionFailed(StepError):
    """Some hosts failed; the others went on. `failures`: host -> (step, error)."""

    def __init__(self, failures: dict[str, tuple[str, BaseException]], report: Report) -> None:
        self.failures = failures
        self.report = report
        lines = [f"{len(failures)} host(s) failed:"]
        lines += [f"  {host}: {step}: {' '.join(str(err).split())}"
                  for host, (step, err) in sorted(failures.items())]
        super().__init__("\n".join(lines))


def run_steps(inventory: Inventory, steps: Sequence[Step], runner_for: Callable[[Host], Runner],
              *, dry_run: bool, shared: dict[str, Any] | None = None,
              progress: Progress | None = None, limit: int | None = None) -> Report:
    """Run every step in order over its hosts, leaving failed hosts out of later steps;
    raise `ActionFailed` at the end if any host failed."""
    report = Report()
    shared = shared if shared is not None else {}
    facts: dict[str, dict[str, Any]] = {h.name: {} for h in inventory.hosts}
    lock = threading.Lock()
    quiet: Progress = progress or (lambda _h, _t, _s: None)
    failures: dict[str, tuple[str, BaseException]] = {}

    def collect(step: Step, err: HostsFailed) -> None:
        for host, error in err.failures.items():
            failures.setdefault(host, (step.title, error))

    def context(host: Host) -> HostContext:
        return HostContext(host=host, runner=runner_for(host), inventory=inventory,
                           dry_run=dry_run, shared=shared, facts=facts[host.name])

    def record(step: Step, ctx: HostContext) -> None:
        with lock:
            for change in ctx.changes:
                report.add(ctx.name, step.title, change)

    for step in steps:
        hosts = [h for h in step.hosts(inventory) if h.name not in failures]
        if not hosts:
            continue
        if step.run is not None:
            run_one = step.run

            def one(host: Host, run_one: StepRun = run_one, step: Step = step) -> None:
                ctx = context(host)
                try:
                    run_one(ctx)
                finally:
                    record(step, ctx)

            try:
                run_on_hosts(hosts, one, limit or inventory.ssh.parallel, title=step.title,
                             progress=quiet)
            except HostsFailed as err:
                collect(step, err)
        else:
            assert step.run_together is not None
            try:
                contexts = run_on_hosts(hosts, context, limit or inventory.ssh.parallel,
                                        title=f"{step.title} (connect)", progress=quiet)
            except HostsFailed as err:
                collect(step, err)
                contexts = err.results
            group = [contexts[h.name] for h in hosts if h.name in contexts]
            for ctx in group:
                quiet(ctx.name, step.title, "start")
            try:
                step.run_together(group)
            except (ConfigError, LockBusy):
                raise  # the whole run stops here, before anything changed
            except HostsFailed as err:
                collect(step, err)
            except Exception as err:  # a whole-cluster step: every host in it failed
                for ctx in group:
                    failures.setdefault(ctx.name, (step.title, err))
                    quiet(ctx.name, step.title, f"failed: {' '.join(str(err).split())}")
                continue
            finally:
                for ctx in group:
                    record(step, ctx)
            for ctx in group:
                if ctx.name not in failures:
                    quiet(ctx.name, step.title, "ok")
    if failures:
        raise ActionFailed(failures, report)
    return report
