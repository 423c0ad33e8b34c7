"""The lab's add-on images, built on this machine from the binaries in `--k8s-bin-dir`.

No registry is reachable from the lab, so each add-on image is a one-layer OCI archive made
with our writer (bootstrap.node.oci_archive) and imported into every node's containerd,
as an AMI would carry it baked in. Real hosts pull the official images pinned by digest
(bootstrap.addons.images).

- `kube-proxy`: the binary, and `nft` with the shared libraries it loads, copied from this
  machine (kube-proxy's nftables mode runs `nft`).
- `coredns`: the static binary alone.
- `busybox`: Debian's static busybox (`/bin/busybox`, package busybox-static), for the
  lab's own first workloads (README): `wget`, `nslookup`, `httpd`, `nc`, a shell.

The archives go beside the binaries (`<k8s-bin-dir>/lab-images/`), where every lab host
sees them (the lab's hosts share this machine's file system outside their own
directories). An index remembers, per image, the key of its inputs (the binary's sha256,
`nft`'s file identity, the recipe's version) and the archive's manifest digest, so a re-run
builds nothing and reads no binary.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bootstrap.errors import ConfigError
from bootstrap.k8s_bin import LocalBinaries
from bootstrap.node import oci_archive

RECIPE = "2"  # bump when an image's content changes for the same inputs
SUBDIR = "lab-images"
INDEX = "index.json"
NFT = Path("/usr/sbin/nft")
PATH_ENV = "PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAMES = ("kube-proxy", "coredns", "busybox")
BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class LabImage:
    name: str  # "kube-proxy"
    ref: str  # "mzk.local/kube-proxy:lab": what the manifests name
    archive: str  # on this machine, seen by every lab host at the same path
    digest: str  # the manifest's: present in a node's content store once imported

    @property
    def blob(self) -> str:
        return self.digest.removeprefix("sha256:")


def reference(name: str, key: str = "") -> str:
    """The add-ons' images are tagged by their inputs, so new binaries roll their pods;
    busybox keeps one tag people can type."""
    return f"mzk.local/{name}:lab" + (f"-{key[:12]}" if key and name != "busybox" else "")


def _stat(path: Path) -> str:
    st = path.stat()
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _key(name: str, binaries: LocalBinaries) -> str:
    parts = [RECIPE, name]
    if name == "busybox":
        parts.append(_stat(BUSYBOX))
    else:
        parts.append(binaries.digests[name])
    if name == "kube-proxy":
        parts.append(_stat(NFT))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _libraries(program: Path) -> list[Path]:
    """The shared objects `program` loads, its interpreter included (from ldd)."""
    out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, timeout=30,
                         check=False)
    found = []
    for line in out.stdout.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if path.startswith("/"):
            found.append(Path(path))
    if out.returncode != 0 or not found:
        raise ConfigError(f"{program}: ldd found no libraries; apt-get install nftables")
    return found


def _entries(name: str, binaries: LocalBinaries) -> list[oci_archive.Entry]:
    if name == "busybox":
        return [("bin", 0o755, None), ("bin/busybox", 0o755, BUSYBOX.read_bytes()),
                ("tmp", 0o1777, None)]
    files: dict[str, tuple[int, bytes]] = {
        f"usr/local/bin/{name}": (0o755, Path(binaries.path(name)).read_bytes())}
    if name == "kube-proxy":
        if not NFT.is_file():
            raise ConfigError(f"{NFT} is missing: apt-get install nftables (the lab's "
                              "kube-proxy image carries it)")
        files["usr/sbin/nft"] = (0o755, NFT.read_bytes())
        for lib in _libraries(NFT):
            files[str(lib).lstrip("/")] = (0o755, lib.read_bytes())
    files["etc/passwd"] = (0o644, b"root:x:0:0:root:/:/sbin/nologin\n"
                                  b"nonroot:x:65532:65532:nonroot:/:/sbin/nologin\n")
    dirs = {str(Path(p).parents[i]) for p in files for i in range(len(Path(p).parents) - 1)}
    return [*((d, 0o755, None) for d in sorted(dirs)),
            *((p, mode, data) for p, (mode, data) in sorted(files.items()))]


def _build(name: str, binaries: LocalBinaries, target: Path, ref: str) -> str:
    config = ({"Entrypoint": ["/bin/busybox"], "Cmd": ["sh"], "Env": ["PATH=/bin"],
               "WorkingDir": "/"} if name == "busybox" else
              {"Entrypoint": [f"/usr/local/bin/{name}"], "Env": [PATH_ENV], "WorkingDir": "/"})
    blobs = oci_archive.image_blobs(_entries(name, binaries), config)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_bytes(oci_archive.archive(ref, blobs))
    os.replace(tmp, target)
    return blobs.manifest_digest


def ensure(binaries: LocalBinaries) -> dict[str, LabImage]:
    """The lab's add-on images, built when their inputs changed; only those whose binary
    is in the directory (no kube-proxy binary: no kube-proxy image)."""
    directory = binaries.dir / SUBDIR
    index_file = directory / INDEX
    try:
        index = json.loads(index_file.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    images, changed = {}, False
    for name in NAMES:
        if name not in binaries.paths and not (name == "busybox" and BUSYBOX.is_file()):
            continue
        key = _key(name, binaries)
        target = directory / f"{name}-{key}.tar"
        known = index.get(name) or {}
        if known.get("key") != key or not target.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            known = {"key": key, "digest": _build(name, binaries, target, reference(name, key))}
            index[name], changed = known, True
        images[name] = LabImage(name, reference(name, key), str(target), known["digest"])
    if changed:
        tmp = index_file.with_name(f".{INDEX}.{os.getpid()}")
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(tmp, index_file)
    return images
