"""`python -m bootstrap lab kubectl ARGS`: kubectl against the lab, from the machine running it.

The lab's API endpoints live in namespaces that this machine does not route to (only the
bastion is reachable, as on AWS), and their names resolve only inside the lab. So kubectl
runs in the bastion's network namespace (its own mount namespace stays this machine's: the
kubeconfig and the binary are read from here) with the admin kubeconfig that apply wrote,
pointed at the regional load balancer's address and verifying the API server's certificate
for the regional name, as a user's kubectl through a bastion would.
"""

from __future__ import annotations

import os
from pathlib import Path

from bootstrap import k8s_bin
from bootstrap.errors import ConfigError
from bootstrap.inventory import load as load_inventory
from bootstrap.lab import build
from bootstrap.lab.layout import plan


def command(lab_dir: Path, args: list[str]) -> list[str]:
    """The command line that runs `kubectl ARGS` against the lab in `lab_dir`."""
    lab_dir = lab_dir.resolve()
    inventory_path = lab_dir / "inventory.yaml"
    if not inventory_path.is_file():
        raise ConfigError(f"--dir {lab_dir}: no lab here (no inventory.yaml); run "
                          "`python -m bootstrap lab up` first")
    admin = lab_dir / "pki" / "local" / "admin.conf"
    if not admin.is_file():
        raise ConfigError(f"{admin}: no admin kubeconfig yet; run `python -m bootstrap apply "
                          f"{inventory_path}` first")
    bins = k8s_bin.resolve_dir(None)
    if bins is None or not (bins / "kubectl").is_file():
        raise ConfigError(f"set {k8s_bin.ENV} to the directory holding kubectl (bin/mzk "
                          "kubectl sets it)")
    state = build.State.load(lab_dir)
    layout = plan(lab_dir, state.data.get("workers", 3), state.data.get("link_slot"))
    regional = load_inventory(inventory_path).regional_endpoint
    if regional.address is None:
        raise ConfigError(f"{inventory_path}: endpoints.regional has no address")
    return ["ip", "netns", "exec", layout.bastion_ns, str(bins / "kubectl"),
            f"--kubeconfig={admin}", f"--server=https://{regional.address}:{regional.port}",
            f"--tls-server-name={regional.name}", *args]


def run(lab_dir: Path, args: list[str]) -> int:
    """Replace this process with kubectl (its exit code is the command's)."""
    argv = command(lab_dir, args)
    os.execvp(argv[0], argv)  # noqa: S606 - a fixed program and our own arguments
    return 127  # not reached
