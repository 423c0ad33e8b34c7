"""`apply`, `plan` and `check` for an inventory.

apply: issue or refresh the PKI locally, then run the action (bootstrap.steps.ACTION) over
SSH on every host, printing progress per host. plan: the same code path, with the PKI
issued into a throw-away copy of the PKI directory and every host effect described instead
of performed. check: one line per host: reachable, the health of its etcd members and
control-plane services, and for nodes whether they pass node checks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bootstrap import inventory as inventory_module
from bootstrap import k8s_bin
from bootstrap.addons import lab_images
from bootstrap.apply_lock import HeldLock
from bootstrap.control_plane import encryption, health
from bootstrap.egress import tunnel_keys
from bootstrap.engine import ActionFailed, HostContext, Report, run_steps
from bootstrap.errors import ConfigError, MultizoneError
from bootstrap.inventory import Host, Inventory
from bootstrap.k8s_bin import LocalBinaries
from bootstrap.k8s_releases import release_for, supported_versions
from bootstrap.pki import generate, near_expiry
from bootstrap.ssh import Connections
from bootstrap.steps import ACTION, addons, nodes
from bootstrap.steps.etcd import CLUSTERS, status
from bootstrap.steps.facts import gather


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("inventory", help="inventory YAML file")
    parser.add_argument("--pki-dir", metavar="DIR", default=None,
                        help="the PKI directory (default: pki/ beside the inventory)")
    parser.add_argument("--k8s-bin-dir", metavar="DIR", default=None,
                        help=f"Kubernetes binaries for lab hosts (default: ${k8s_bin.ENV}); "
                             "real hosts install the pinned official release")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def pki_dir_for(args: argparse.Namespace, inventory_path: str) -> Path:
    given = getattr(args, "pki_dir", None)
    return Path(given) if given else Path(inventory_path).resolve().parent / "pki"


class ProgressPrinter:
    """Prints `[  1.23s] cp-a: etcd ok` as hosts finish steps; failures always print."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, host: str, title: str, state: str) -> None:
        if state == "start" or (self.quiet and not state.startswith("failed")):
            return
        with self.lock:
            print(f"[{time.monotonic() - self.started:6.2f}s] {host}: {title} {state}",
                  flush=True)


def run(args: argparse.Namespace) -> int:
    inventory = inventory_module.load(args.inventory)
    inventory_module.check_private_key(inventory)  # bad input before anything is written
    if args.command == "check":
        directory = k8s_bin.resolve_dir(args.k8s_bin_dir)
        code = check(inventory, quiet=args.quiet,
                     kubectl=str(directory / "kubectl") if directory else None)
        warn_expiry(inventory, pki_dir_for(args, args.inventory))
        return code
    dry_run = args.command == "plan"
    pki_dir = pki_dir_for(args, args.inventory)
    binaries = local_binaries(inventory, args.k8s_bin_dir)
    try:
        report = execute(inventory, pki_dir, dry_run=dry_run, binaries=binaries,
                         progress=ProgressPrinter(args.quiet))
    except ActionFailed as err:
        for line in err.report.lines():
            print(line)
        raise
    verb = "would change" if dry_run else "changed"
    for line in report.lines():
        print(line)
    hosts = len([h for h in report.changes if h != "local"])
    local = " and the local PKI" if "local" in report.changes else ""
    print(f"{args.command}: {hosts} host(s){local} {verb}" if report.changed
          else f"{args.command}: no changes")
    return 0


def local_binaries(inventory: Inventory, given: str | None) -> LocalBinaries | None:
    """The local binaries directory, checked against the inventory's version; without
    one, the version must be a pinned official release. Checked before any host."""
    directory = k8s_bin.resolve_dir(given)
    if directory is not None:
        return k8s_bin.load(directory, inventory.cluster.kubernetes_version)
    version = inventory.cluster.kubernetes_version
    if release_for(version) is None:
        raise ConfigError(f"{inventory.source}: cluster.kubernetes_version: {version} has no "
                          f"pinned release checksums; use one of "
                          f"{', '.join(supported_versions())} (or, for the lab, give "
                          f"--k8s-bin-dir / ${k8s_bin.ENV})")
    return None


def execute(inventory: Inventory, pki_dir: Path, *, dry_run: bool,
            binaries: LocalBinaries | None = None,
            progress: Callable[[str, str, str], None] | None = None) -> Report:
    """The whole action; with dry_run nothing is written, locally or on any host.
    `binaries` None: from $MZK_K8S_BIN_DIR if set (see `local_binaries`)."""
    if binaries is None:
        binaries = local_binaries(inventory, None)
    # Lab: the add-ons' images built here; real hosts: every image pinned (else exit 2).
    images = lab_images.ensure(binaries) if binaries is not None else None
    if binaries is None:
        addons.pinned_images(inventory)
    made_pki_dir = not pki_dir.exists()
    with tempfile.TemporaryDirectory(prefix="mzk-plan-") as scratch:
        if dry_run:
            work = Path(scratch) / "pki"
            if pki_dir.exists():
                shutil.copytree(pki_dir, work, symlinks=True)
        else:
            work = pki_dir
        pki = generate(inventory, work)
        encryption_config, made_key = encryption.ensure(work)
        keys = tunnel_keys.ensure(work, inventory)
        report = Report()
        if made_key:
            report.add("local", "pki", f"write {encryption.path_in(work).relative_to(work)}")
        for rel in keys.written:
            report.add("local", "pki", f"write {rel}")
        for rel in keys.removed:
            report.add("local", "pki", f"remove {rel} (egress is {inventory.cluster.egress})")
        for path in pki.local.written:
            report.add("local", "pki", f"write {Path(path).relative_to(work)}")
        for line in pki.local.issued:
            report.add("local", "pki", f"issue {line}")
        locks: list[HeldLock] = []
        shared: dict[str, Any] = {"pki": pki, "k8s_bin": binaries, "tunnel_keys": keys,
                                  "encryption": encryption_config, "locks": locks,
                                  "lab_images": images}
        with Connections(inventory, progress=progress) as connections:
            if inventory.ssh.authorized_keys:
                shared["bastion_runner"] = connections.bastion_runner()
            try:
                host_report = run_steps(inventory, ACTION, connections.runner,
                                        dry_run=dry_run, shared=shared, progress=progress)
            except ActionFailed as err:
                err.report = _merge(report, err.report)
                raise
            except ConfigError:
                if made_pki_dir and not dry_run:  # refused: leave no new PKI behind
                    shutil.rmtree(pki_dir, ignore_errors=True)
                raise
            finally:
                taken = shared.get("lock_results", {}).values()
                for held in {id(h): h for h in [*locks, *taken]
                             if isinstance(h, HeldLock)}.values():
                    held.release()
    return _merge(report, host_report)


def _merge(first: Report, second: Report) -> Report:
    for host, changes in second.changes.items():
        for step, change in changes:
            first.add(host, step, change)
    return first


EXPIRY_WARNING_DAYS = 90  # a CA or leaf this close to its end is named by `check`


def warn_expiry(inventory: Inventory, pki_dir: Path) -> None:
    """Name, with days left, every CA and leaf of the local PKI near its end (a warning:
    the exit code stays the cluster's health)."""
    within = max(EXPIRY_WARNING_DAYS, inventory.pki.renew_before_days)
    try:
        lines = near_expiry(pki_dir, dt.datetime.now(dt.UTC), within)
    except MultizoneError as err:
        lines = [f"cannot read the PKI in {pki_dir}: {err}"]
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def check(inventory: Inventory, quiet: bool = False, kubectl: str | None = None) -> int:
    """One line per host; exit 1 if any host is unreachable, any etcd member unhealthy,
    or any control-plane service or endpoint not answering."""
    failed = False
    lines: dict[str, str] = {}
    node_failures: dict[str, list[str]] = {}
    registered: dict[str, Any] = {}
    lock = threading.Lock()

    def one(host: Host, runner) -> None:  # type: ignore[no-untyped-def]
        ctx = HostContext(host=host, runner=runner, inventory=inventory, dry_run=True,
                          shared={})
        gather(ctx)
        ctx.facts["etcdctl"] = ctx.facts["bin"].get("etcdctl") or "etcdctl"
        parts = [f"{host.zone}", host.address, "ssh ok"]
        if host.has("etcd"):
            parts += [status(ctx, cluster) for cluster in CLUSTERS]
        if host.has("control-plane"):
            tool = kubectl if ctx.facts.get("lab") and kubectl else "/usr/local/bin/kubectl"
            found = health.parse(runner.run(health.script(inventory, host, tool)).stdout,
                                 host.name)
            parts.append(found.phrase())
            if not found.healthy:
                parts.append("PROBLEM")
            if inventory.control_plane[:1] == (host,) and inventory.nodes:
                registered.update(nodes.registered(runner, tool) or {})
        if host.has("node"):
            node_failures[host.name] = ctx.facts.get("node_failures", [])
        with lock:
            lines[host.name] = ", ".join(parts)

    with Connections(inventory) as connections:
        try:
            connections.run_on_hosts(inventory.hosts, one, title="check")
        except MultizoneError as err:
            failed = True
            for line in str(err).splitlines()[1:]:
                name, _, reason = line.strip().partition(": ")
                lines[name] = f"UNREACHABLE or failing: {reason}"
    for host in inventory.nodes:
        if host.name in node_failures and host.name in lines:
            lines[host.name] += ", " + nodes.check_phrase(
                node_failures[host.name], registered.get(host.name), host)
    joined = sorted(set(registered) - {h.name for h in inventory.hosts})
    for name in joined:  # auto-scaled: the API server's view, no login
        print(f"{name}: {nodes.joined_phrase(registered[name])}")
    for host in inventory.hosts:
        line = lines.get(host.name, "no answer")
        failed = failed or any(word in line for word in ("DOWN", "unreadable", "PROBLEM"))
        print(f"{host.name}: {line}")
    print("check: " + ("problems found" if failed else
                       "all hosts, etcd members, control-plane services and endpoints healthy"),
          file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0
