"""`python -m bootstrap pki INVENTORY --out DIR`: issue or refresh every host's PKI files."""

from __future__ import annotations

import argparse
import sys
import time

from bootstrap import inventory as inventory_module
from bootstrap.pki import key_ledger
from bootstrap.pki.issue import MAX_WORKERS, generate


def _directory(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("empty; name the PKI directory, e.g. --out ./pki")
    return text


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to "
                                         f"{MAX_WORKERS}; leave it out for one per core")
    return value


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("inventory", help="inventory YAML file")
    parser.add_argument("--out", required=True, metavar="DIR", type=_directory,
                        help="directory of the PKI: DIR/local (CAs, admin.conf) and "
                             "DIR/<host>/<path on host>; new, empty, or an earlier run's")
    parser.add_argument("--workers", type=_workers, default=None,
                        help=f"processes for key generation, 1 to {MAX_WORKERS} (default: one "
                             "per core)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.add_argument("--rotate-sa-key", action="store_true",
                        help="replace the service-account signing key on purpose (the old "
                             "pair goes to local/pki/retired/; every token it signed stops "
                             "being accepted once applied: docs/operations.md)")
    parser.add_argument("--forget-lost-key", action="append", default=[], metavar="PATH",
                        help="a lost key without a public half (local/encryption-keys.yaml, "
                             "local/egress-tunnel/HOST.key) that the next apply may make "
                             "anew; repeatable (docs/operations.md says what that costs)")


def run(args: argparse.Namespace) -> int:
    inventory = inventory_module.load(args.inventory)
    if args.forget_lost_key:
        for rel in key_ledger.forget(args.out, args.forget_lost_key):
            print(f"{rel}: forgotten; the next apply makes a new one")
    started = time.monotonic()
    result = generate(inventory, args.out, workers=args.workers,
                      rotate_sa_key=args.rotate_sa_key)
    elapsed = time.monotonic() - started
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    issued = sum(len(h.issued) for h in result.hosts.values()) + len(result.local.issued)
    written = sum(len(h.written) for h in result.hosts.values()) + len(result.local.written)
    removed = sum(len(h.removed) for h in result.hosts.values()) + len(result.local.removed)
    if not args.quiet:
        for host in [result.local, *result.hosts.values()]:
            if host.changed or host.issued:
                detail = "; ".join(host.issued) or "files updated"
                print(f"{host.host}: {len(host.written)} written, {len(host.removed)} removed"
                      f" ({detail})")
    state = "changed" if result.changed else "unchanged"
    print(f"pki {state}: {len(result.hosts)} hosts, {issued} certificates issued, "
          f"{written} files written, {removed} removed in {elapsed:.2f}s -> {args.out}")
    return 0
