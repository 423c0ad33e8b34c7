"""The Konnectivity install script, run for real against a fake OCI registry on 127.0.0.1.

The fake registry serves an image built here the way registry.k8s.io serves the official
ones: manifests by digest at /v2/kas-network-proxy/<name>/manifests/<digest>, blobs by digest
through a 307 redirect to another path. The image is an index over linux/amd64 and
linux/arm64 manifests (plus an attestation entry that must be skipped); each manifest has a
base layer without the binary and a gzip'd layer holding `/proxy-agent`, a tiny shell script.
Only the registry URL and the pinned digest differ from production.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bootstrap.egress import konnectivity_release as kr
from bootstrap.errors import ConfigError

NAME = "proxy-agent"
VERSION = "0.36.0"
REPO = f"/v2/kas-network-proxy/{NAME}"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(members: dict[str, tuple[bytes, int]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, (data, mode) in members.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def agent_script(arch: str) -> bytes:
    return f"#!/bin/sh\necho 'fake proxy-agent v{VERSION} linux/{arch}'\n".encode()


@dataclass
class Image:
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # digest -> (b, type)
    index_digest: str = ""
    manifest_digest: dict[str, str] = field(default_factory=dict)  # arch -> digest
    binary_layer: dict[str, str] = field(default_factory=dict)  # arch -> digest


def build_image() -> Image:
    image = Image()
    base = layer({"etc/passwd": (b"root:x:0:0:root:/root:/sbin/nologin\n", 0o644),
                  "etc/nsswitch.conf": (b"hosts: files dns\n", 0o644)})
    image.blobs[digest_of(base)] = base
    entries = []
    for arch in ("amd64", "arm64"):
        binary = layer({NAME: (agent_script(arch), 0o755)})
        config = json.dumps({"architecture": arch, "os": "linux",
                             "config": {"Entrypoint": [f"/{NAME}"]}}).encode()
        for blob in (binary, config):
            image.blobs[digest_of(blob)] = blob
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZ, "digest": digest_of(b), "size": len(b)}
                       for b in (base, binary)],
        }, indent=3).encode()
        image.manifests[digest_of(manifest)] = (manifest, OCI_MANIFEST)
        image.manifest_digest[arch] = digest_of(manifest)
        image.binary_layer[arch] = digest_of(binary)
        entries.append({"mediaType": OCI_MANIFEST, "digest": digest_of(manifest),
                        "size": len(manifest), "platform": {"architecture": arch, "os": "linux"}})
    attestation = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})
    entries.append({"mediaType": OCI_MANIFEST, "digest": digest_of(attestation.encode()),
                    "size": len(attestation),
                    "platform": {"architecture": "unknown", "os": "unknown"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                       indent=3).encode()
    image.manifests[digest_of(index)] = (index, OCI_INDEX)
    image.index_digest = digest_of(index)
    return image


class Registry:
    """A registry on 127.0.0.1 serving `image`; every request is recorded."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.requests: list[tuple[str, str]] = []  # (path, Accept)
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                registry.requests.append((self.path, self.headers.get("Accept", "")))
                kind, _, digest = self.path.removeprefix(REPO + "/").partition("/")
                if kind == "manifests" and digest in registry.image.manifests:
                    data, media = registry.image.manifests[digest]
                    if media not in self.headers.get("Accept", ""):
                        return self.send_error(404, f"no representation for {media}")
                    return self.reply(data, media)
                if kind == "blobs" and digest in registry.image.blobs:
                    self.send_response(307)
                    self.send_header("Location", f"/storage/{digest.split(':')[1]}")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                if self.path.startswith("/storage/"):
                    blob = registry.image.blobs.get("sha256:" + self.path.split("/")[-1])
                    if blob is not None:
                        return self.reply(blob, "application/octet-stream")
                self.send_error(404)

            def reply(self, data: bytes, media: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def downloads(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture()
def registry() -> Iterator[Registry]:
    reg = Registry(build_image())
    reg.thread.start()
    try:
        yield reg
    finally:
        reg.server.shutdown()
        reg.server.server_close()
        reg.thread.join(timeout=10)


@dataclass
class Host:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "usr-local-bin"

    @property
    def state(self) -> Path:
        return self.root / "var-lib-mzk"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def script(self, registry: Registry, digest: str, arch: str = "amd64",
               version: str = VERSION) -> str:
        return kr.install_script(NAME, version, digest, arch, registry=registry.url,
                                 install_dir=str(self.bin), marker_dir=str(self.state))

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(self.tmp)}
        # --retry 0: a refused request fails at once instead of after curl's back-off.
        return subprocess.run(["sh", "-c", script.replace("--retry 3", "--retry 0")],
                              capture_output=True, text=True, env=env, timeout=120)

    def files(self) -> list[str]:
        """Every file left on the host, relative to its root (temp files included)."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                      if not p.is_dir())


@pytest.fixture()
def host(tmp_path: Path) -> Host:
    return Host(tmp_path / "host")


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_the_image_is_fetched_checked_and_the_binary_installed(
        host: Host, registry: Registry, arch: str) -> None:
    pinned = registry.image.index_digest
    proc = host.run(host.script(registry, pinned, arch))
    assert proc.returncode == 0, proc.stderr
    binary = host.bin / NAME
    assert binary.read_bytes() == agent_script(arch)
    assert binary.stat().st_mode & 0o777 == 0o755
    marker = Path(kr.marker_path(NAME, str(host.state)))
    assert marker.read_text() == kr.marker_line(NAME, VERSION, pinned) + "\n"
    assert marker.read_text() == f"{NAME} {VERSION} {pinned}\n"
    assert host.files() == sorted([f"usr-local-bin/{NAME}", f"var-lib-mzk/konnectivity-{NAME}"])
    ran = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30)
    assert ran.stdout == f"fake proxy-agent v{VERSION} linux/{arch}\n"
    # What was asked for, in order: the pinned index, this arch's manifest, both layers
    # (each through the redirect), and nothing of the other architecture.
    image = registry.image
    base_layer = next(d for d in image.blobs if d not in image.binary_layer.values()
                      and b"passwd" in gzip.decompress(image.blobs[d]))
    assert registry.downloads() == [
        f"{REPO}/manifests/{pinned}",
        f"{REPO}/manifests/{image.manifest_digest[arch]}",
        f"{REPO}/blobs/{base_layer}", f"/storage/{base_layer.split(':')[1]}",
        f"{REPO}/blobs/{image.binary_layer[arch]}",
        f"/storage/{image.binary_layer[arch].split(':')[1]}",
    ]
    accepts = [accept for path, accept in registry.requests if "/manifests/" in path]
    assert all(t in accepts[0] for t in kr.INDEX_TYPES)
    assert all(t in accepts[1] for t in kr.MANIFEST_TYPES)


def test_a_converged_host_is_recognised_without_downloading(
        host: Host, registry: Registry) -> None:
    script = host.script(registry, registry.image.index_digest)
    assert host.run(script).returncode == 0
    asked = len(registry.requests)
    inode = (host.bin / NAME).stat().st_ino
    again = host.run(script)
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stdout
    assert len(registry.requests) == asked  # not one request
    assert (host.bin / NAME).stat().st_ino == inode  # not even rewritten
    assert list(host.tmp.iterdir()) == []


def test_a_marker_for_another_release_or_a_missing_binary_installs_again(
        host: Host, registry: Registry) -> None:
    pinned = registry.image.index_digest
    marker = Path(kr.marker_path(NAME, str(host.state)))
    host.state.mkdir(parents=True)
    marker.write_text(kr.marker_line(NAME, "0.35.0", pinned) + "\n")  # an older release
    assert host.run(host.script(registry, pinned)).returncode == 0
    assert marker.read_text() == kr.marker_line(NAME, VERSION, pinned) + "\n"
    asked = len(registry.requests)
    (host.bin / NAME).unlink()  # the marker is right but the binary is gone
    assert host.run(host.script(registry, pinned)).returncode == 0
    assert len(registry.requests) > asked
    assert (host.bin / NAME).read_bytes() == agent_script("amd64")


def test_a_run_cut_before_the_marker_leaves_no_marker_so_the_next_run_installs(
        host: Host, registry: Registry) -> None:
    pinned = registry.image.index_digest
    marker = Path(kr.marker_path(NAME, str(host.state)))
    host.bin.mkdir(parents=True)
    (host.bin / NAME).write_bytes(b"previous agent")
    host.state.mkdir(parents=True)
    marker.write_text(kr.marker_line(NAME, "0.35.0", "sha256:" + "1" * 64) + "\n")
    blocker = Path(f"{marker}.tmp")
    blocker.mkdir()  # the marker cannot be written: the run stops after the binary
    cut = host.run(host.script(registry, pinned))
    assert cut.returncode != 0
    assert (host.bin / NAME).read_bytes() == agent_script("amd64")
    assert not marker.exists()  # the old marker no longer describes the binary
    blocker.rmdir()
    asked = len(registry.requests)
    proc = host.run(host.script(registry, pinned))
    assert proc.returncode == 0, proc.stderr
    assert len(registry.requests) > asked  # installed again, not taken as converged
    assert marker.read_text() == kr.marker_line(NAME, VERSION, pinned) + "\n"


def assert_nothing_installed(host: Host, before: list[str]) -> None:
    assert host.files() == before  # no binary, no marker, no temp file anywhere
    assert list(host.tmp.iterdir()) == []


def test_a_tampered_layer_installs_nothing(host: Host, registry: Registry) -> None:
    image = registry.image
    bad = image.binary_layer["amd64"]
    image.blobs[bad] = layer({NAME: (b"#!/bin/sh\necho owned\n", 0o755)})
    # A host that already runs an older release keeps it, marker and all.
    host.bin.mkdir(parents=True)
    (host.bin / NAME).write_bytes(b"previous agent")
    host.state.mkdir(parents=True)
    old = kr.marker_line(NAME, "0.35.0", "sha256:" + "0" * 64) + "\n"
    Path(kr.marker_path(NAME, str(host.state))).write_text(old)
    before = host.files()
    proc = host.run(host.script(registry, image.index_digest))
    assert proc.returncode != 0
    assert f"{NAME} {VERSION}: layer {bad} did not match its digest" in proc.stderr
    assert "nothing installed" in proc.stderr
    assert_nothing_installed(host, before)
    assert (host.bin / NAME).read_bytes() == b"previous agent"
    assert Path(kr.marker_path(NAME, str(host.state))).read_text() == old


def test_a_tampered_manifest_installs_nothing(host: Host, registry: Registry) -> None:
    image = registry.image
    target = image.manifest_digest["amd64"]
    data, media = image.manifests[target]
    doctored = json.loads(data)
    doctored["layers"].pop(0)  # still well-formed: only the digest can tell
    image.manifests[target] = (json.dumps(doctored).encode(), media)
    proc = host.run(host.script(registry, image.index_digest))
    assert proc.returncode != 0
    assert f"{NAME} {VERSION}: linux/amd64 manifest {target} did not match its digest" \
        in proc.stderr
    assert_nothing_installed(host, [])
    assert not any("/blobs/" in p for p in registry.downloads())  # stopped before the layers


def test_an_index_other_than_the_pinned_one_installs_nothing(
        host: Host, registry: Registry) -> None:
    image = registry.image
    pinned = digest_of(b"the index that was pinned")
    image.manifests[pinned] = image.manifests[image.index_digest]  # the registry answers
    proc = host.run(host.script(registry, pinned))                 # with another index
    assert proc.returncode != 0
    assert f"{NAME} {VERSION}: image index did not match its digest (expected {pinned}, " \
        f"got {image.index_digest})" in proc.stderr
    assert_nothing_installed(host, [])
    assert registry.downloads() == [f"{REPO}/manifests/{pinned}"]


def test_an_index_without_the_hosts_architecture_installs_nothing(
        host: Host, registry: Registry) -> None:
    image = registry.image
    index, media = image.manifests[image.index_digest]
    doc = json.loads(index)
    doc["manifests"] = [m for m in doc["manifests"] if m["platform"]["architecture"] != "arm64"]
    amd64_only = json.dumps(doc).encode()
    image.manifests[digest_of(amd64_only)] = (amd64_only, media)
    proc = host.run(host.script(registry, digest_of(amd64_only), arch="arm64"))
    assert proc.returncode != 0
    assert f"{NAME} {VERSION}: the image index has no linux/arm64 manifest" in proc.stderr
    assert_nothing_installed(host, [])


def test_an_unreachable_registry_installs_nothing(host: Host, registry: Registry) -> None:
    image = registry.image
    image.manifests.clear()
    proc = host.run(host.script(registry, digest_of(b"anything")))
    assert proc.returncode != 0
    assert "404" in proc.stderr
    assert_nothing_installed(host, [])


# The pinned table and the production script.

def test_every_pinned_release_names_both_binaries_by_sha256() -> None:
    assert kr.RELEASES, "no pinned release"
    assert "0.36.0" in kr.RELEASES  # the version of the lab's binaries
    seen: set[str] = set()
    for version, digests in kr.RELEASES.items():
        assert set(digests) == set(kr.NAMES), version
        for digest in digests.values():
            assert digest.startswith("sha256:") and len(digest) == 71
            int(digest[7:], 16)
            assert digest not in seen  # a copy-paste slip would repeat one
            seen.add(digest)
    assert kr.release_for("0.36.0") == kr.RELEASES["0.36.0"]
    assert kr.release_for("v0.36.0") is None
    assert kr.pinned_digest("proxy-server", "0.36.0") == kr.RELEASES["0.36.0"]["proxy-server"]


def test_an_unpinned_version_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as raised:
        kr.pinned_digest("proxy-agent", "0.99.0")
    message = str(raised.value)
    assert "\n" not in message
    assert "Konnectivity 0.99.0 has no pinned proxy-agent image digest" in message
    assert "0.36.0" in message


@pytest.mark.parametrize("kwargs", [
    {"name": "kubelet"}, {"digest": "sha256:abc"}, {"digest": "sha512:" + "a" * 64},
    {"version": "v0.36.0"}, {"arch": "x86_64"}, {"registry": "registry.k8s.io"},
])
def test_install_script_refuses_what_it_cannot_pin(kwargs: dict[str, str]) -> None:
    args = {"name": NAME, "version": VERSION, "digest": kr.RELEASES[VERSION][NAME],
            "arch": "amd64", **kwargs}
    with pytest.raises(ValueError):
        kr.install_script(**args)


def test_the_production_script_fetches_the_official_image_over_https_only() -> None:
    digest = kr.RELEASES["0.36.0"]["proxy-server"]
    script = kr.install_script("proxy-server", "0.36.0", digest, "amd64")
    assert "base=https://registry.k8s.io/v2/kas-network-proxy/proxy-server " in script
    assert f"pinned={digest} " in script
    assert "--proto =https --proto-redir =https" in script
    assert "bin=/usr/local/bin/proxy-server tmpbin=/usr/local/bin/.proxy-server.mzk" in script
    assert "mark=/var/lib/mzk/konnectivity-proxy-server " in script
    assert kr.marker_path("proxy-server") == "/var/lib/mzk/konnectivity-proxy-server"
    # The marker goes last: after the binary is in place.
    assert script.index('mv -f "$tmpbin" "$bin"') < script.index('mv -f "$mark.tmp" "$mark"')
    assert subprocess.run(["sh", "-n", "-c", script], timeout=30).returncode == 0
