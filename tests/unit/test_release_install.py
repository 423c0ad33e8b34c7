"""The pinned-release install script, run for real: curl from a loopback HTTP server, sha256
checked before unpacking, binaries placed atomically. The archive is built from this
machine's etcd in the official layout (`etcd-v<version>-linux-amd64/etcd`), because the
real download is out of reach here; only the URL and the checksum differ from production.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap.steps.binaries import ETCD_RELEASE, Release, install_script

TOP = "etcd-v9.9.9-linux-amd64"


def archive(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture(scope="module")
def etcd_binaries() -> dict[str, bytes]:
    found = {name: shutil.which(name) for name in ("etcd", "etcdctl")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: apt-get install etcd-server "
                    "etcd-client (bin/mzk setup does it)")
    return {name: Path(path).read_bytes() for name, path in found.items() if path}


@pytest.fixture(scope="module")
def genuine(etcd_binaries: dict[str, bytes]) -> bytes:
    return archive(etcd_binaries)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1; (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *_a, **_k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def release(url: str, data: bytes) -> Release:
    return Release(name="etcd", version="9.9.9", url=url,
                   sha256=hashlib.sha256(data).hexdigest(), members=("etcd", "etcdctl"))


def run(script: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    temp = tmp / "tmp"
    temp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(temp)}
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)


def test_the_archive_is_fetched_checked_and_installed(
        tmp_path: Path, served: tuple[Path, str], etcd_binaries: dict[str, bytes],
        genuine: bytes) -> None:
    root, base = served
    data = genuine
    (root / f"{TOP}.tar.gz").write_bytes(data)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = install_script(release(f"{base}/{TOP}.tar.gz", data), str(bin_dir))
    proc = run(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, content in etcd_binaries.items():
        path = bin_dir / name
        assert path.read_bytes() == content
        assert path.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in bin_dir.iterdir()) == ["etcd", "etcdctl"]  # no temp left
    assert list((tmp_path / "tmp").iterdir()) == []  # the work directory is gone
    version = subprocess.run([str(bin_dir / "etcd"), "--version"], capture_output=True,
                             text=True, timeout=30)
    assert "etcd Version:" in version.stdout
    # Again: same result (the step skips it when the version matches; the script is safe).
    inode = (bin_dir / "etcd").stat().st_ino
    assert run(script, tmp_path).returncode == 0
    assert (bin_dir / "etcd").read_bytes() == etcd_binaries["etcd"]
    assert (bin_dir / "etcd").stat().st_ino != inode  # replaced by rename, not rewritten


def test_an_archive_with_the_wrong_checksum_installs_nothing(
        tmp_path: Path, served: tuple[Path, str], etcd_binaries: dict[str, bytes],
        genuine: bytes) -> None:
    root, base = served
    tampered = archive({**etcd_binaries, "etcd": b"#!/bin/sh\necho owned\n"})
    (root / f"{TOP}.tar.gz").write_bytes(tampered)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "etcd").write_bytes(b"previous etcd")
    proc = run(install_script(release(f"{base}/{TOP}.tar.gz", genuine), str(bin_dir)),
               tmp_path)
    assert proc.returncode != 0
    assert "etcd: archive sha256 mismatch" in proc.stderr
    assert sorted(p.name for p in bin_dir.iterdir()) == ["etcd"]
    assert (bin_dir / "etcd").read_bytes() == b"previous etcd"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_failed_download_installs_nothing(tmp_path: Path, served: tuple[Path, str]) -> None:
    _root, base = served
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = install_script(release(f"{base}/missing.tar.gz", b""), str(bin_dir))
    proc = run(script.replace("--retry 3", "--retry 0"), tmp_path)
    assert proc.returncode != 0
    assert "404" in proc.stderr
    assert list(bin_dir.iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_production_script_pins_the_official_archive() -> None:
    script = install_script(ETCD_RELEASE)
    assert ETCD_RELEASE.url.startswith("https://github.com/etcd-io/etcd/releases/download/")
    assert f"v{ETCD_RELEASE.version}/etcd-v{ETCD_RELEASE.version}-linux-amd64.tar.gz" \
        in ETCD_RELEASE.url
    assert f"= {ETCD_RELEASE.sha256} ]" in script
    assert len(ETCD_RELEASE.sha256) == 64
    assert script.index("sha256sum") < script.index("tar -xzf")
    assert "/usr/local/bin/.etcd.mzk" in script and "mv -f /usr/local/bin/.etcd.mzk" in script
