"""Time `apply` on the lab: cold (fresh hosts, PKI issued, etcd main + events formed, the
control plane started and ready), a no-op re-apply, and a flag change rolled over the three
control-plane hosts (one at a time, each ready before the next), with 3 control-plane hosts
and 12, then 48, workers. Needs root and the Kubernetes binaries (MZK_K8S_BIN_DIR, as
`bin/mzk` sets it).

    .venv/bin/python bench/bootstrap.py [--workers 12,48] [--runs 3]

Bytes written by the re-apply are counted on the hosts' own file systems: every file the
bootstrap may write (under the lab hosts' bind-mounted directories) whose inode, mtime or
size changed. Times are measured in-process (the engine, without the ~0.5 s interpreter
start and imports of `python -m bootstrap`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootstrap.apply_command import execute, local_binaries  # noqa: E402
from bootstrap.inventory import load  # noqa: E402
from bootstrap.lab import build  # noqa: E402

WRITTEN_DIRS = ("etc/kubernetes", "etc/systemd/system", "var/lib/kubelet", "var/lib/mzk/bin")


def host_files(lab_dir: Path) -> dict[str, tuple[int, int, int]]:
    found = {}
    for fs in (lab_dir / "hosts").glob("*/fs"):
        for top in WRITTEN_DIRS:
            for dirpath, _dirs, files in os.walk(fs / top):
                for name in files:
                    st = os.stat(Path(dirpath, name))
                    found[str(Path(dirpath, name))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


def bytes_written(before: dict, after: dict) -> int:
    return sum(after[p][2] for p in after if before.get(p) != after[p])


def one(workers: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mzk-bench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        try:
            started = time.perf_counter()
            build.up(lab_dir, workers=workers, say=lambda _m: None)
            lab_up = time.perf_counter() - started
            inventory = load(lab_dir / "inventory.yaml")
            binaries = local_binaries(inventory, None)
            started = time.perf_counter()
            execute(inventory, lab_dir / "pki", dry_run=False, binaries=binaries)
            cold = time.perf_counter() - started
            noops, written = [], []
            for _ in range(runs):
                before = host_files(lab_dir)
                started = time.perf_counter()
                report = execute(inventory, lab_dir / "pki", dry_run=False, binaries=binaries)
                noops.append(time.perf_counter() - started)
                assert not report.changed, report.lines()
                written.append(bytes_written(before, host_files(lab_dir)))
            # A flag change on every control-plane host (the in-flight limits follow
            # cluster.max_nodes), rolled one host at a time.
            scaled = dataclasses.replace(inventory, cluster=dataclasses.replace(
                inventory.cluster, max_nodes=3000))
            started = time.perf_counter()
            report = execute(scaled, lab_dir / "pki", dry_run=False, binaries=binaries)
            rolled = time.perf_counter() - started
            restarts = sum("restart kube-apiserver" in line for line in report.lines())
            hosts = len(inventory.hosts)
            print(f"3 cp + {workers:2d} workers ({hosts} hosts): lab up {lab_up:5.2f} s, "
                  f"cold apply {cold:5.2f} s, no-op re-apply median {statistics.median(noops):5.2f}"
                  f" s (min {min(noops):.2f}, max {max(noops):.2f}), bytes written "
                  f"{max(written)}, flag change rolled over {restarts} API servers "
                  f"{rolled:5.2f} s", flush=True)
        finally:
            build.down(lab_dir, say=lambda _m: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workers", default="12,48",
                        help="worker counts, comma-separated (3 control-plane hosts each)")
    parser.add_argument("--runs", type=int, default=3, help="no-op re-applies per lab")
    args = parser.parse_args()
    for workers in (int(w) for w in args.workers.split(",")):
        one(workers, args.runs)


if __name__ == "__main__":
    main()
