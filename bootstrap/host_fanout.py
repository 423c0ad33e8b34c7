"""Run one function on many hosts in parallel, every failure collected, none stopping
the others: the rule that a host fails alone, kept in one place for the engine, the steps
and `Connections`.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bootstrap.errors import StepError

log = logging.getLogger("bootstrap.ssh")

T = TypeVar("T")

# (host name, step title, state): state is "start", "ok" or "failed: <reason>".
Progress = Callable[[str, str, str], None]


def log_progress(host: str, title: str, state: str) -> None:
    """Default progress hook: one log line per host and state."""
    log.info("%s: %s ... %s", host, title, state)


def print_progress(host: str, title: str, state: str) -> None:
    """Progress for the command line: `cp-a: placing PKI ... ok`, one line per finished host."""
    if state != "start":
        print(f"{host}: {title} ... {state}", file=sys.stderr, flush=True)


class HostsFailed(StepError):
    """Some hosts failed; `failures` maps host to its error, `results` holds the others."""

    def __init__(self, title: str, failures: Mapping[str, BaseException],
                 results: Mapping[str, Any]) -> None:
        self.failures = dict(failures)
        self.results = dict(results)
        lines = [f"{title}: {len(self.failures)} of {len(self.failures) + len(self.results)} "
                 "host(s) failed:"]
        lines += [f"  {name}: {_one_line(err)}" for name, err in sorted(self.failures.items())]
        super().__init__("\n".join(lines))


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


def _name(host: Any) -> str:
    return host if isinstance(host, str) else host.name


def run_on_hosts(hosts: Iterable[Any], fn: Callable[[Any], T], limit: int = 32, *,
                 title: str = "step", progress: Progress | None = None) -> dict[str, T]:
    """Run `fn(host)` for every host, at most `limit` at once; results by host name.

    A failing host does not stop the others; afterwards, if any failed, one `HostsFailed`
    (a `StepError`) names each with its reason, successful results attached.
    """
    hosts = list(hosts)
    report = progress or log_progress
    results: dict[str, T] = {}
    failures: dict[str, BaseException] = {}
    lock = threading.Lock()

    def one(host: Any) -> None:
        name = _name(host)
        report(name, title, "start")
        try:
            value = fn(host)
        except Exception as err:  # collected and reported below, one line per host
            with lock:
                failures[name] = err
            report(name, title, f"failed: {_one_line(err)}")
            return
        with lock:
            results[name] = value
        report(name, title, "ok")

    if hosts:
        with ThreadPoolExecutor(max_workers=max(1, min(limit, len(hosts)))) as pool:
            list(pool.map(one, hosts))
    if failures:
        raise HostsFailed(title, failures, results)
    return {(_name(h)): results[_name(h)] for h in hosts}
