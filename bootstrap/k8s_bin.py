"""A local directory of Kubernetes binaries, for the lab and the tests.

Real hosts install the official release archives (`bootstrap.k8s_releases`, sha512 pinned);
no registry reachable from the lab's machine carries them, so the lab runs builds from a
directory given by `--k8s-bin-dir` or `MZK_K8S_BIN_DIR` (`bin/mzk` unpacks
`../shared/k8s-bin` into a cache and sets it). Lab hosts share this machine's root file
system outside their bind-mounted directories, so they run the binaries in place.

Checked before any host is touched: every binary the control plane needs is there, and
each one's `--version` has the inventory's minor version. A version answer is remembered
per file (inode, size, mtime) in `.mzk-versions.json` beside the binaries, so a re-run
does not start five Go programs to learn what it already knows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bootstrap.errors import ConfigError

ENV = "MZK_K8S_BIN_DIR"
CONTROL_PLANE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                          "kubectl")
NODE_BINARIES = ("kubelet",)
# Konnectivity's binaries have no --version: taken when present, identified by digest.
KONNECTIVITY_BINARIES = ("proxy-server", "proxy-agent")
# The add-ons' binaries, for the lab's images (bootstrap.addons.lab_images): taken when
# present, identified by digest (coredns has no --version).
ADDON_BINARIES = ("kube-proxy", "coredns")
VERSIONS_CACHE = ".mzk-versions.json"
_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class LocalBinaries:
    """Binaries found in a directory: name -> (path, version "1.36.2", sha256)."""

    dir: Path
    paths: dict[str, str]
    versions: dict[str, str]
    digests: dict[str, str]

    def path(self, name: str) -> str:
        return self.paths[name]


def resolve_dir(given: str | None) -> Path | None:
    """The directory from the flag, else from the environment, else None."""
    text = given if given is not None else os.environ.get(ENV)
    if text is None or text == "":
        return None
    return Path(text).resolve()


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _ask_version(path: Path) -> str:
    args = [str(path), "version", "--client"] if path.name == "kubectl" else [str(path),
                                                                               "--version"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except OSError as err:
        raise ConfigError(f"{path}: cannot run it ({err.strerror}); give a directory of "
                          f"linux/{os.uname().machine} Kubernetes binaries") from err
    match = _VERSION.search(out.stdout + out.stderr)
    if not match:
        raise ConfigError(f"{path}: '--version' printed no Kubernetes version; is it a "
                          "Kubernetes binary?")
    return ".".join(match.groups())


def _sums(directory: Path) -> dict[str, str]:
    """SHA256SUMS beside the binaries, if any (bin/mzk verified them when unpacking)."""
    try:
        text = (directory / "SHA256SUMS").read_text()
    except OSError:
        return {}
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(directory: Path, kubernetes_version: str,
         names: tuple[str, ...] = (*CONTROL_PLANE_BINARIES, *NODE_BINARIES)) -> LocalBinaries:
    """Check the directory against the inventory's version; a `ConfigError` names the
    binary and the fix."""
    if not directory.is_dir():
        raise ConfigError(f"--k8s-bin-dir / {ENV}: {directory} is not a directory; give the "
                          "directory holding kube-apiserver, kube-controller-manager, ...")
    paths = {}
    for name in names:
        path = directory / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"--k8s-bin-dir / {ENV}: {path} is missing or not executable; "
                              f"put the {name} binary there")
        paths[name] = path
    cache_file = directory / VERSIONS_CACHE
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    sums = _sums(directory)
    known = {n: cache.get(n, {}) for n in names}
    todo = [n for n in names if known[n].get("stat") != _stat_key(paths[n])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        asked = dict(zip(todo, pool.map(lambda n: (_ask_version(paths[n]),
                                                   sums.get(n) or _sha256(paths[n])), todo),
                         strict=True))
    for name, (version, digest) in asked.items():
        known[name] = {"stat": _stat_key(paths[name]), "version": version, "sha256": digest}
    if asked:
        try:
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps({**cache, **known}, indent=1))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only directory: ask again next time
    want = kubernetes_version.split(".")[:2]
    for name in names:
        have = known[name]["version"]
        if have.split(".")[:2] != want:
            raise ConfigError(f"cluster.kubernetes_version: {kubernetes_version} but "
                              f"{paths[name]} is v{have}; set the version to "
                              f"{'.'.join(have.split('.')[:2])}.x or give binaries of "
                              f"{'.'.join(want)}")
    for name in (*KONNECTIVITY_BINARIES, *ADDON_BINARIES):
        path = directory / name
        if path.is_file() and os.access(path, os.X_OK):
            paths[name] = path
            known[name] = {"version": "-", "sha256": sums.get(name) or _sha256(path)}
    return LocalBinaries(dir=directory, paths={n: str(p) for n, p in paths.items()},
                         versions={n: known[n]["version"] for n in paths},
                         digests={n: known[n]["sha256"] for n in paths})


def version_of(directory: Path) -> str | None:
    """The Kubernetes version of the kube-apiserver in a directory (for the lab's
    inventory), or None when there is none."""
    path = directory / "kube-apiserver"
    if not path.is_file():
        return None
    try:
        return _ask_version(path)
    except ConfigError:
        return None
