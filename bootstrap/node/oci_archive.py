"""Single-layer OCI images as `oci-archive` tars, byte-for-byte reproducible.

What `ctr images import` (and skopeo, podman) read: an OCI image layout (index.json,
oci-layout, blobs/sha256/...) in a tar. JSON with sorted keys and no spaces, tar entries
sorted with mtime 0 and owner 0:0, the layer uncompressed (gzip would make the bytes depend
on the zlib version). Used for the lab's sandbox image (bootstrap.node.pause_image) and the
lab tests' workload image; no registry is reachable from the lab.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
PLATFORM = {"architecture": "amd64", "os": "linux"}

# (name, mode, content; None for a directory)
Entry = tuple[str, int, bytes | None]


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest(blob), "size": len(blob)}


def tar(entries: list[Entry]) -> bytes:
    """A ustar archive of the entries, sorted by name, owned by 0:0 with mtime 0."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, mode, content in sorted(entries):
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid = mode, 0, 0, 0
            info.uname = info.gname = ""
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return out.getvalue()


@dataclass(frozen=True)
class ImageBlobs:
    layer: bytes
    config: bytes
    manifest: bytes

    @property
    def manifest_digest(self) -> str:
        """What `ctr images ls` and `crictl images --digests` show, whatever the tag."""
        return digest(self.manifest)


def image_blobs(files: list[Entry], container_config: dict[str, Any]) -> ImageBlobs:
    """The three blobs of a one-layer image of `files`; none depends on the tag."""
    layer = tar(files)
    config = canonical_json({
        **PLATFORM,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, config),
        "layers": [descriptor(MEDIA_LAYER, layer)],
    })
    return ImageBlobs(layer, config, manifest)


def archive(tag: str, blobs: ImageBlobs) -> bytes:
    """The `oci-archive` of the image, named `tag` in index.json."""
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{**descriptor(MEDIA_MANIFEST, blobs.manifest),
                       "annotations": {REF_NAME: tag},
                       "platform": PLATFORM}],
    })
    entries: list[Entry] = [
        ("blobs", 0o755, None),
        ("blobs/sha256", 0o755, None),
        ("index.json", 0o644, index),
        ("oci-layout", 0o644, canonical_json({"imageLayoutVersion": "1.0.0"})),
    ]
    for blob in {blobs.layer, blobs.config, blobs.manifest}:
        entries.append((f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", 0o644, blob))
    return tar(entries)
