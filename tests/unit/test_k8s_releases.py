"""The pinned Kubernetes release table: shape, ordering, checksum form and lookups."""

from __future__ import annotations

import re

import pytest

from bootstrap.k8s_releases import (
    DOWNLOAD_BASE,
    NODE_BIN_DIR,
    RELEASES,
    SERVER_BIN_DIR,
    K8sRelease,
    release_for,
    supported_versions,
)

SHA512 = re.compile(r"[0-9a-f]{128}")
KINDS_ARCHES = [(kind, arch) for kind in ("server", "node") for arch in ("amd64", "arm64")]


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_three_distinct_minors_newest_first() -> None:
    versions = supported_versions()
    assert len(versions) == 3
    assert all(re.fullmatch(r"1\.\d+\.\d+", v) for v in versions)
    minors = [_key(v)[:2] for v in versions]
    assert len(set(minors)) == 3
    assert [_key(v) for v in versions] == sorted((_key(v) for v in versions), reverse=True)
    assert versions == tuple(release.version for release in RELEASES)


def test_every_checksum_is_sha512_hex_and_unique() -> None:
    digests = [archive.sha512 for release in RELEASES for archive in release.archives]
    assert len(digests) == 12
    for digest in digests:
        assert SHA512.fullmatch(digest), digest
    assert len(set(digests)) == len(digests)


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.version)
def test_release_has_exactly_the_four_archives(release: K8sRelease) -> None:
    names = {archive.name for archive in release.archives}
    assert names == {f"kubernetes-{kind}-linux-{arch}.tar.gz" for kind, arch in KINDS_ARCHES}
    assert len(release.archives) == 4
    for kind, arch in KINDS_ARCHES:
        assert release.archive(kind, arch).name == f"kubernetes-{kind}-linux-{arch}.tar.gz"
    minor = ".".join(release.version.split(".")[:2])
    assert f"CHANGELOG/CHANGELOG-{minor}.md @ " in release.source


def test_release_for_matches_exact_versions_only() -> None:
    for release in RELEASES:
        assert release_for(release.version) is release
    newest = RELEASES[0].version
    minor = ".".join(newest.split(".")[:2])
    assert release_for(minor) is None
    assert release_for("1.36") is None
    assert release_for(f"v{newest}") is None
    assert release_for("1.99.0") is None
    assert release_for("") is None


def test_url_points_at_dl_k8s_io() -> None:
    release = RELEASES[0]
    assert DOWNLOAD_BASE == "https://dl.k8s.io"
    assert release.url("server", "amd64") == (
        f"https://dl.k8s.io/v{release.version}/kubernetes-server-linux-amd64.tar.gz"
    )
    assert release.url("node", "arm64") == (
        f"https://dl.k8s.io/v{release.version}/kubernetes-node-linux-arm64.tar.gz"
    )


def test_missing_archive_raises_lookup_error() -> None:
    release = RELEASES[0]
    with pytest.raises(LookupError, match="s390x"):
        release.archive("server", "s390x")
    with pytest.raises(LookupError):
        release.url("node", "ppc64le")
    with pytest.raises(LookupError):
        release.archive("client", "amd64")


def test_binary_dirs_inside_archives() -> None:
    assert SERVER_BIN_DIR == "kubernetes/server/bin"
    assert NODE_BIN_DIR == "kubernetes/node/bin"
