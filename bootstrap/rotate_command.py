"""`python -m bootstrap rotate-ca INVENTORY [--ca NAME ...] [--through PHASE]`: rotate CAs
on purpose, with the cluster working throughout (bootstrap.pki.rotation says how).

Each phase is recorded, then applied to every host (services rolled one host at a time);
`--through trust` or `--through switch` stops after that phase (to update clients outside
the cluster, say), and a later run resumes where the last one stopped.
"""

from __future__ import annotations

import argparse

from bootstrap import inventory as inventory_module
from bootstrap.apply_command import ProgressPrinter, execute, local_binaries, pki_dir_for
from bootstrap.errors import ConfigError
from bootstrap.pki import rotation
from bootstrap.pki.table import CAS


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("inventory", help="inventory YAML file")
    parser.add_argument("--ca", action="append", choices=[ca.name for ca in CAS],
                        help="a CA to rotate (repeat for more; default: all three)")
    parser.add_argument("--through", choices=rotation.PHASES, default="retire",
                        help="stop after this phase (default: retire, the whole rotation)")
    parser.add_argument("--pki-dir", metavar="DIR", default=None,
                        help="the PKI directory (default: pki/ beside the inventory)")
    parser.add_argument("--k8s-bin-dir", metavar="DIR", default=None,
                        help="Kubernetes binaries for lab hosts (default: $MZK_K8S_BIN_DIR)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    inventory = inventory_module.load(args.inventory)
    inventory_module.check_private_key(inventory)
    pki_dir = pki_dir_for(args, args.inventory)
    if not (pki_dir / "local").is_dir():
        raise ConfigError(f"{pki_dir}: no PKI to rotate here; give --pki-dir the cluster's "
                          "PKI directory")
    binaries = local_binaries(inventory, args.k8s_bin_dir)
    names = args.ca or [ca.name for ca in CAS]
    underway = rotation.state(pki_dir)
    others = sorted(set(underway) - set(names))
    if others:
        raise ConfigError(f"--ca: {', '.join(others)} is being rotated too; include it "
                          "(--ca for each) or finish its rotation first")
    started = {underway.get(n) for n in names}
    if len(started) > 1:
        raise ConfigError(f"--ca: {', '.join(names)} are in different phases "
                          f"({underway}); rotate them one at a time")
    first = rotation.PHASES.index(started.pop() or "trust")
    last = rotation.PHASES.index(args.through)
    progress = ProgressPrinter(args.quiet)
    for phase in rotation.PHASES[first:last + 1]:
        if phase == "retire":
            for line in rotation.retire(pki_dir, names):
                print(line)
        else:
            rotation.set_phase(pki_dir, names, phase)
        report = execute(inventory, pki_dir, dry_run=False, binaries=binaries,
                         progress=progress)
        hosts = len([h for h in report.changes if h != "local"])
        print(f"rotate-ca {phase}: {', '.join(names)}: {hosts} host(s) changed")
    return 0
