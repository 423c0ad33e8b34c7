"""`python -m bootstrap lab up|down|status|launch|kubectl [--dir DIR]`: the local three-zone lab."""

from __future__ import annotations

import argparse
from pathlib import Path

from bootstrap.lab import build

DEFAULT_DIR = "/srv/multizone-k8s/lab"


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="lab_action", required=True,
                                parser_class=type(parser))
    up = sub.add_parser("up", help="build the lab (idempotent) and write DIR/inventory.yaml")
    up.add_argument("--workers", type=int, default=3, metavar="N",
                    help="worker hosts, spread over the three zones (default 3)")
    down = sub.add_parser("down", help="remove every namespace, process and file of the lab")
    status = sub.add_parser("status", help="one line per host: name, zone, address, sshd")
    launch = sub.add_parser("launch", help="launch a node into a zone's pool, as its auto "
                            "scaling group would; it joins by itself (TLS bootstrapping)")
    launch.add_argument("--zone", required=True, help="lab-a, lab-b or lab-c")
    launch.add_argument("--claim", metavar="NAME",
                        help="an impostor: its kubelet asks for another node's name, with "
                             "the instance's own identity")
    launch.add_argument("--steal", metavar="NAME",
                        help="an impostor: it presents a copy of launched node NAME's signed "
                             "identity document instead of its own")
    kubectl = sub.add_parser("kubectl", help="kubectl against the lab's regional endpoint, "
                             "from this machine (through the bastion's network)")
    kubectl.add_argument("kubectl_args", nargs=argparse.REMAINDER, metavar="ARGS",
                         help="kubectl's own arguments, e.g. get nodes -o wide")
    for p in (up, down, status, launch, kubectl):
        p.add_argument("--dir", type=Path, default=Path(DEFAULT_DIR),
                       help=f"the lab's directory (default {DEFAULT_DIR}: outside any work "
                            "tree, since it holds the lab's CA keys)")


def run(args: argparse.Namespace) -> int:
    if args.lab_action == "up":
        if args.workers < 0 or args.workers > 600:
            from bootstrap.errors import ConfigError
            raise ConfigError(f"--workers {args.workers}: use 0..600")
        build.up(args.dir, args.workers)
        return 0
    if args.lab_action == "down":
        build.down(args.dir)
        return 0
    if args.lab_action == "launch":
        from bootstrap.lab.launch import launch
        node = launch(args.dir, args.zone, args.claim, args.steal)
        print(f"launched {node.name} ({node.instance_id}, {node.address}) into pool "
              f"{node.pool}; its kubelet asks to join as {node.claimed}"
              + (f" with {args.steal}'s identity document" if args.steal else ""))
        return 0
    if args.lab_action == "kubectl":
        from bootstrap.lab import kubectl
        given = args.kubectl_args
        return kubectl.run(args.dir, given[1:] if given[:1] == ["--"] else given)
    hosts = build.status(args.dir)
    if not hosts:
        print(f"no lab in {args.dir.resolve()}")
        return 1
    for host in hosts:
        print(host.line())
    return 0 if all(h.sshd_up for h in hosts) else 1
