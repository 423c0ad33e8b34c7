"""Official Kubernetes release archives we can install on real hosts, pinned by sha512.

Every checksum is copied from the "Server Binaries" / "Node Binaries" tables of the release's
own CHANGELOG in kubernetes/kubernetes (CHANGELOG/CHANGELOG-1.XX.md), all three files read at
commit 008b3652959ca58af8be3fb5b6ecfe9ae7638282, where the newest GA patch releases listed are
v1.36.0, v1.35.4 and v1.34.7. Nothing here is computed or guessed: to add a release, copy its
rows from its CHANGELOG and name the commit in `source`.
"""

from __future__ import annotations

from dataclasses import dataclass

DOWNLOAD_BASE = "https://dl.k8s.io"

# Where the binaries sit inside the unpacked archives.
SERVER_BIN_DIR = "kubernetes/server/bin"
NODE_BIN_DIR = "kubernetes/node/bin"

_CHANGELOG_COMMIT = "008b3652959ca58af8be3fb5b6ecfe9ae7638282"


@dataclass(frozen=True)
class Archive:
    name: str  # "kubernetes-server-linux-amd64.tar.gz"
    sha512: str


@dataclass(frozen=True)
class K8sRelease:
    version: str  # "1.36.0" (no leading v)
    archives: tuple[Archive, ...]
    source: str  # where the checksums were read

    def archive(self, kind: str, arch: str) -> Archive:
        """The `kind` ("server" | "node") archive for linux/`arch` ("amd64" | "arm64")."""
        name = f"kubernetes-{kind}-linux-{arch}.tar.gz"
        for archive in self.archives:
            if archive.name == name:
                return archive
        known = ", ".join(a.name for a in self.archives)
        raise LookupError(f"Kubernetes v{self.version} has no pinned {name} (pinned: {known})")

    def url(self, kind: str, arch: str) -> str:
        return f"{DOWNLOAD_BASE}/v{self.version}/{self.archive(kind, arch).name}"


def _release(version: str, sha512: dict[str, str]) -> K8sRelease:
    minor = ".".join(version.split(".")[:2])
    return K8sRelease(
        version=version,
        archives=tuple(
            Archive(f"kubernetes-{kind_arch}.tar.gz", digest)
            for kind_arch, digest in sha512.items()
        ),
        source=f"kubernetes/kubernetes CHANGELOG/CHANGELOG-{minor}.md @ {_CHANGELOG_COMMIT}",
    )


RELEASES: tuple[K8sRelease, ...] = (  # newest first
    _release(
        "1.36.0",
        {
            "server-linux-amd64": "1c64da92575451c2c7ff97c79b772e603995f8e76da1371a6b0746aaa27b65dc"
            "e81c4d734cbb50f40e71486a8e08df36f14e12974f97d4d29e41f23a172a6a25",
            "server-linux-arm64": "7f95e451baedd9368a2fa637afa84c9ed1b958736540ca27a379e5e292e1a10c"
            "5d9a29539f833047574bf5d3b6f907f32dee5735acecc11aa4686f078108dcf8",
            "node-linux-amd64": "8bba5bd0cb77997ad965739caff3c8839fd16f284cf28a0e46c44538ce0b6fd8"
            "3c5f3c608dd86c4831c3de9306bbfd02ce26bbe9a426754b6253efa1d5cc030f",
            "node-linux-arm64": "10a4c3660e6e19fae998b04345dbe42711e61745bf374405c33e8604335b12ff"
            "55ce7b68f8a0d67d1f7ce4519f706fbd8d80781b7128369fe047c38915e8d189",
        },
    ),
    _release(
        "1.35.4",
        {
            "server-linux-amd64": "7454c2d9023de3230972e965e1e2a587a291e2a1abee703bb0737057e1646b23"
            "ebac538b93dd778e93579e3c293dc1fa8d002e6848ad5ebc01598bc47358fe44",
            "server-linux-arm64": "67187a2fe780be7816f9d10e082ed02cbba306bab379980280d00ba4c4017ff5"
            "3c50cd2ff81d248c91ddcc064276b8760e17c73a1a7da1d35067a6fc0ffbdc88",
            "node-linux-amd64": "bfdde7cb0eb382d28b37a499d041a210a10afc86280b1d0eefeec179e8563b88"
            "48f744ad0302a239662e3b5219622cdc2925a69c9d8098d7cd6237c659d78932",
            "node-linux-arm64": "754ed5fc01a1675b7aad31feb4b4a68ebde1d63411e2565249cac9cc7b576316"
            "52808f3ec2fcc3530c9a5b2dbd39cef305b4f286c39f35e70ede616458312b3b",
        },
    ),
    _release(
        "1.34.7",
        {
            "server-linux-amd64": "baaf8dd4ff110a384e9dfe3db54a85a04223074fd13da32a38f9883a12b93bcd"
            "26ae4d666bbc2f37724f0a6631f3d2e4ddb97caaf909906711a824afd70cec81",
            "server-linux-arm64": "06fa3ac02fa8e90f406d2a054c85d11ad8e323b70aaf158acc0e68da32964901"
            "68ec2c7ee6f61bf4e3b14adad5f33f62feeeaf5974b9417b2d34a771e013d4f3",
            "node-linux-amd64": "75db53a192c4f81e6810e4544675ba474a39fb3381b20cbeceb175091a217387"
            "d73df6d648034be4c7c07c294d97985d77204b6b54b0ed9bedb89fb879c56f3e",
            "node-linux-arm64": "d40e5ddcbb1a8570247f850a00b21dfd32379c90235f2435de0fd8b844a235a2"
            "af48c5ce615b574d26d7e2e0f9b96b1b433adc42dd666f214855bc4023690840",
        },
    ),
)


def supported_versions() -> tuple[str, ...]:
    return tuple(release.version for release in RELEASES)


def release_for(version: str) -> K8sRelease | None:
    """The pinned release with exactly this version ("1.36.0"; not "1.36", not "v1.36.0")."""
    return next((release for release in RELEASES if release.version == version), None)
