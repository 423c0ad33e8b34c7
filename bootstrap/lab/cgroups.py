"""Each lab host's own cgroup subtree, and its removal with every process in it.

Lab hosts share this machine's kernel, so two kubelets must not share a cgroup root: each
host gets `/<netns>` (unique per lab and host) in every hierarchy, named in the host's
/etc/mzk/lab-cgroup-root for the bootstrap to read. Pods run in their own network namespaces,
so killing a host's network namespace does not reach them; their cgroups do: `remove` kills
every process under the host's root in every hierarchy (cgroup v2's `unified` included, where
runc also files them) and removes the directories, deepest first.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
ROOT_FILE = "etc/mzk/lab-cgroup-root"  # under a host's fs/


def hierarchies() -> list[Path]:
    """Every mounted hierarchy (v1 controllers, named ones, and the unified v2 one)."""
    if not CGROUP_FS.is_dir():
        return []
    return sorted(p for p in CGROUP_FS.iterdir() if p.is_dir() and not p.is_symlink()
                  and ((p / "cgroup.procs").exists()))


def root_for(netns: str) -> str:
    return "/" + netns


def create(root: str) -> None:
    """The root in every hierarchy; a cpuset gets its parent's cpus and mems (a v1 cpuset
    cgroup starts empty and would refuse tasks)."""
    for hierarchy in hierarchies():
        path = hierarchy / root.lstrip("/")
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            own = path / name
            if own.exists() and not own.read_text().strip():
                own.write_text((hierarchy / name).read_text())


def _pids(path: Path) -> list[int]:
    found: list[int] = []
    for procs in path.rglob("cgroup.procs"):
        try:
            found += [int(p) for p in procs.read_text().split()]
        except OSError:
            pass
    return found


def kill_until_gone(pids_of: Callable[[], list[int]], deadline: float) -> list[int]:
    """SIGKILL whatever `pids_of()` lists until it lists nothing or the (monotonic)
    deadline passed; the pids still there at the end (none: all gone)."""
    while pids := pids_of():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            return pids
        time.sleep(0.02)
    return []


def remove(root: str, limit: float = 10.0) -> list[str]:
    """SIGKILL everything under `root` in every hierarchy, then rmdir its cgroups
    (deepest first). Returns the directories that could not be removed."""
    deadline = time.monotonic() + limit
    left: list[str] = []
    for hierarchy in hierarchies():
        path = hierarchy / root.lstrip("/")
        if not path.is_dir():
            continue
        kill_until_gone(functools.partial(_pids, path), deadline)
        for directory in sorted((p for p in path.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True) + [path]:
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # a killed task leaves its cgroup a moment later
            else:
                left.append(str(directory))
    return left
