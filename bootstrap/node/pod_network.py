#!/usr/bin/env python3
"""mzk-pod-network: routes between the pod CIDRs of all nodes, over a kernel VXLAN overlay.

Each node's pods sit on its bridge (bootstrap.node.cni) in the /24 the controller-manager
gave the node. Nodes of different zones are in different subnets, so plain routes to each
other's pod CIDRs would need the network's help (VPC route tables cap far below 5,000
entries); VXLAN carries pod packets in UDP between the nodes' own addresses, which any
underlay routes. No learning and no multicast: for each peer Node the agent writes one
forwarding entry (its VXLAN MAC -> its InternalIP), one permanent neighbour (its pod
CIDR's network address -> that MAC) and one route (its pod CIDR via that address, onlink),
so a packet never floods and 5,000 nodes cost 15,000 kernel entries per node. The MAC is
derived from the InternalIP, so no node publishes anything: Node objects (spec.podCIDR,
status.addresses) are all it reads, with the kubelet's credential, by one list and then a
watch; the Node authorizer (1.34+) lets a node read only its own Node, so the cluster needs
bootstrap.addons.pod_network (get/list/watch Nodes for the group system:nodes).

Pods keep their addresses between nodes; traffic leaving the cluster CIDR is masqueraded
(nftables table `ip mzk_pods`, its digest in its comment, replaced in one transaction).

Each pass reads the kernel's state and runs only the commands that close the gap (a
converged node runs reads only), logging one key=value line per change; the plan is pure
(desired_state, plan: bootstrap.node.pod_network_state) and the executor here. API errors
keep the kernel state as it is.

Shipped to the nodes with its companions (COMPANIONS, each beside it as `<name>.py`) and run
by their python3 (3.9+): standard library only.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NoReturn

try:  # in the project
    from bootstrap.node.kube_api import MAX_BACKOFF, ApiUnavailable, KubeApi, ListWatch
    from bootstrap.node.pod_network_state import (
        DEVICE,
        IP_FORWARD,
        TABLE,
        Change,
        Current,
        Desired,
        NodeRecord,
        PlanError,
        desired_state,
        ipv4_network,
        nft_digest,
        parse_fdb,
        parse_link,
        parse_neighbours,
        parse_routes,
        parse_underlay,
        plan,
        quoted,
        record_of,
        records_from,
    )
except ImportError:  # on a host: shipped beside this program
    from kube_api import MAX_BACKOFF, ApiUnavailable, KubeApi, ListWatch  # type: ignore[no-redef]
    from pod_network_state import (  # type: ignore[no-redef]
        DEVICE,
        IP_FORWARD,
        TABLE,
        Change,
        Current,
        Desired,
        NodeRecord,
        PlanError,
        desired_state,
        ipv4_network,
        nft_digest,
        parse_fdb,
        parse_link,
        parse_neighbours,
        parse_routes,
        parse_underlay,
        plan,
        quoted,
        record_of,
        records_from,
    )

# The modules shipped beside this program (bootstrap/node/<name>.py as <name>.py).
COMPANIONS = ("kube_api", "pod_network_state")
PROGRAM = "mzk-pod-network"
NODES_PATH = "/api/v1/nodes"

Runner = Callable[[list[str], "bytes | None"], "tuple[int, str, str]"]


# ---- the executor --------------------------------------------------------------------------

def run_command(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(
        errors="replace")


def read_current(desired: Desired, run: Runner = run_command) -> Current:
    """The kernel's state as far as the overlay goes: reads only."""
    def read(*argv: str, missing_ok: bool = False) -> str:
        code, out, err = run(list(argv), None)
        if code != 0 and not missing_ok:
            raise PlanError(f"{' '.join(argv)}: {err.strip() or f'exit {code}'}")
        return out if code == 0 else ""

    current = Current()
    current.underlay, current.underlay_mtu = parse_underlay(read("ip", "-j", "-4", "addr", "show"),
                                                            desired.address)
    current.link = parse_link(read("ip", "-j", "-d", "addr", "show", "dev", DEVICE,
                                   missing_ok=True))
    if current.link is not None:
        current.routes = parse_routes(read("ip", "-j", "route", "show", "dev", DEVICE))
        current.neighbours = parse_neighbours(read("ip", "-j", "neigh", "show", "dev", DEVICE))
        current.fdb = parse_fdb(read("bridge", "-j", "fdb", "show", "dev", DEVICE))
    current.nft_digest = nft_digest(read("nft", "list", "table", "ip", TABLE, missing_ok=True))
    with open(IP_FORWARD, encoding="ascii") as handle:
        current.ip_forward = handle.read().strip() != "0"
    first = ipaddress.IPv4Network(desired.service_cidr).network_address + 1
    current.service_routed = run(["ip", "-j", "route", "get", str(first)], None)[0] == 0
    return current


BATCHED = {"ip route", "ip neigh", "bridge fdb"}  # entries: many per pass on a big cluster


def _one(change: Change, run: Runner) -> tuple[int, str]:
    if not change.path:
        code, _, err = run(list(change.argv), change.stdin)
        return code, err
    try:
        with open(change.path, "wb") as handle:
            handle.write(change.stdin or b"")
    except OSError as err:
        return 1, str(err)
    return 0, ""


def execute(changes: list[Change], run: Runner = run_command,
            log: Callable[[str], None] = print) -> bool:
    """Run the changes in order, logging each one done; False when any failed. A run of
    entry changes of one tool is one `-batch` process (5,000 peers: two processes); a device
    or table change that fails ends the pass (what follows depends on it)."""
    ok = True
    for tool, grouped in itertools.groupby(changes, key=lambda c: c.argv[0] if " ".join(
            c.argv[:2]) in BATCHED else ""):
        group = list(grouped)
        if not tool:
            for change in group:
                code, err = _one(change, run)
                log(change.line() + (f" result=failed error={quoted(_brief(err))}" if code
                                     else ""))
                if code:
                    return False
            continue
        batch = "".join(" ".join(c.argv[1:]) + "\n" for c in group).encode()
        code, _, err = run([tool, "-force", "-batch", "-"], batch)
        failed = {int(n) - 1 for n in re.findall(r"Command failed -:(\d+)", err)}
        failed = failed or (set(range(len(group))) if code else set())
        for number, change in enumerate(group):
            log(change.line() + (f" result=failed error={quoted(_brief(err))}"
                                 if number in failed else ""))
        ok = ok and not failed
    return ok


def _brief(text: str) -> str:
    return " ".join(text.split())[:300]


# ---- where Nodes come from -----------------------------------------------------------------

def read_nodes_file(path: str) -> dict[str, NodeRecord]:
    with open(path, encoding="utf-8") as handle:
        return records_from(json.load(handle))


# ---- the program ---------------------------------------------------------------------------

def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Agent:
    node: str
    cluster_cidr: str
    service_cidr: str
    status_path: str = ""
    run: Runner = run_command
    peers: int = 0
    waiting: str = ""  # why this node has no overlay yet
    told: set[str] = field(default_factory=set)  # lines logged once

    def reconcile(self, records: Mapping[str, NodeRecord]) -> bool:
        """One pass against `records`; False when a read or a command failed."""
        desired = desired_state(self.node, records, self.cluster_cidr, self.service_cidr)
        self.waiting = desired if isinstance(desired, str) else ""
        if isinstance(desired, str):
            self._once(f"event=waiting node={self.node} reason={quoted(desired)}")
            return True
        for name, why in desired.skipped:
            self._once(f"event=peer-skipped node={name} reason={quoted(why)}")
        self.peers = len(desired.peers)
        try:
            changes = plan(read_current(desired, self.run), desired)
        except (PlanError, OSError, ValueError, subprocess.SubprocessError) as err:
            log(f"event=error node={self.node} error={quoted(str(err))}")
            return False
        return execute(changes, self.run, log)

    def _once(self, line: str) -> None:
        if line not in self.told:
            self.told.add(line)
            log(line)

    def write_status(self, ok: bool, error: str) -> None:
        """Atomically (temp + rename), so a reader never sees half a file."""
        if not self.status_path:
            return
        state = {"node": self.node, "peers": self.peers, "last_pass_ok": ok,
                 "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),  # noqa: UP017
                 "waiting": self.waiting, "error": error}
        temporary = f"{self.status_path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.status_path) or ".", exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(state, handle)
            os.replace(temporary, self.status_path)
        except OSError as err:
            log(f"event=error status={self.status_path} error={quoted(str(err))}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        print(f"{PROGRAM}: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog=PROGRAM, description="Route pod CIDRs between nodes over VXLAN.")
    for flag in ("--server", "--ca", "--cert", "--key"):
        parser.add_argument(flag, default="")
    for flag in ("--node", "--cluster-cidr", "--service-cidr"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between passes")
    parser.add_argument("--status", default="", help="write the pass's status (JSON) here")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--nodes-file", default="", help="a JSON NodeList instead of the API")
    args = parser.parse_args(argv)
    missing = [f"--{f}" for f in ("server", "ca", "cert", "key") if not getattr(args, f)]
    if missing and not args.nodes_file:
        parser.error(f"{', '.join(missing)} missing: give the API server and the kubelet's "
                     "credential (or --nodes-file PATH)")
    for flag, value in (("--cluster-cidr", args.cluster_cidr),
                        ("--service-cidr", args.service_cidr)):
        if ipv4_network(value) is None:
            parser.error(f"{flag} {value!r} must be an IPv4 network such as 10.244.0.0/16")
    if not args.node.strip():
        parser.error("--node must name this node (its Node object's name)")
    if not args.interval > 0:
        parser.error(f"--interval {args.interval} must be more than 0 seconds")
    return args


def open_cache(args: argparse.Namespace, agent: Agent) -> ListWatch:
    """The Node cache on the kubelet's credential. A service waits for a credential file that
    is not there yet (an auto-scaled node's, until TLS bootstrapping); --once does not."""
    while True:
        try:
            return ListWatch(KubeApi(args.server, args.ca, args.cert, args.key), NODES_PATH,
                             record_of, log)
        except FileNotFoundError as err:
            if args.once:
                raise
            agent.waiting = f"credential {err.filename} is not there yet"
            agent._once(f"event=waiting node={agent.node} reason={quoted(agent.waiting)}")
            agent.write_status(False, "")
            time.sleep(args.interval)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    agent = Agent(args.node, args.cluster_cidr, args.service_cidr, args.status)
    cache: ListWatch | None = None
    if not args.nodes_file:
        try:
            cache = open_cache(args, agent)
        except (ValueError, OSError, ssl.SSLError) as err:
            print(f"{PROGRAM}: {err}", file=sys.stderr)
            return 2
        if not args.once:
            cache.start()
    backoff = 0.0
    while True:  # ended by SIGTERM (systemd) or --once
        if cache is not None:
            cache.changed.clear()
        records: dict[str, NodeRecord] | None
        try:
            if cache is None:
                records, error = read_nodes_file(args.nodes_file), ""
            elif args.once:
                records, error = cache.list_all()[0], ""
            else:
                records, error = cache.snapshot()
                error = error or ("" if records is not None else "no node list yet")
        except (ApiUnavailable, OSError, ValueError) as err:
            records, error = None, str(err)
            log(f"event=nodes-error error={quoted(error)}")
        # Against the last good records even while the API fails: the state is kept.
        ok = records is not None and agent.reconcile(records) and not error
        agent.write_status(ok, error or ("" if ok else "the pass failed (see the log)"))
        if args.once:
            return 0 if ok else 1
        backoff = 0.0 if ok else min(max(2 * backoff, args.interval), MAX_BACKOFF)
        if backoff or cache is None:
            time.sleep(backoff or args.interval)
        else:
            cache.changed.wait(args.interval)


if __name__ == "__main__":
    sys.exit(main())
