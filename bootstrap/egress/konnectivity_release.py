"""Konnectivity's `proxy-server` and `proxy-agent` on real hosts, from their official release
artifacts, pinned by digest.

apiserver-network-proxy publishes container images, not archives:
`registry.k8s.io/kas-network-proxy/<name>:v<version>`, each an image index (manifest list)
over one manifest per platform. Its Dockerfiles (`artifacts/images/server-build.Dockerfile`,
`agent-build.Dockerfile` in kubernetes-sigs/apiserver-network-proxy) put the static binary at
the image root: `WORKDIR /`, `COPY ... proxy-server .`, `ENTRYPOINT ["/proxy-server"]` (the
same for `/proxy-agent`). Hosts have no container runtime, so the install script speaks the
OCI distribution API with curl and checks every byte it uses against the pinned index digest:
the index by its pinned digest, the platform manifest by the digest the index names, each
layer by the digest the manifest names. The binary is taken from the last layer that holds
it (the Dockerfiles copy it in their final step; whiteout files are not applied). Then it is
installed atomically and a marker `<name> <version> <index digest>` is written last, so a cut
run installs again and a converged host is recognised without a download.

The lab does not use this: it runs the binaries from a local directory (`bootstrap.k8s_bin`).
"""

from __future__ import annotations

import json
import re
import shlex

from bootstrap.errors import ConfigError

REGISTRY = "https://registry.k8s.io"
REPOSITORY = "kas-network-proxy"  # registry.k8s.io/kas-network-proxy/<name>
NAMES = ("proxy-server", "proxy-agent")  # proxy-server on control-plane hosts, agent on nodes
ARCHES = ("amd64", "arm64")  # GOARCH names, as in the image index's platform entries
INSTALL_DIR = "/usr/local/bin"
MARKER_DIR = "/var/lib/mzk"  # holds konnectivity-<name>: "<name> <version> <index digest>"

# The image index digest of each release, copied from the Kubernetes image promoter's manifest
# for this repository: kubernetes/k8s.io
# registry.k8s.io/images/k8s-staging-kas-network-proxy/images.yaml
# @ 04a53aba14bc38c147357ebaa235d1e19659aa22 ("dmap": digest -> tags). That file is what
# populates registry.k8s.io, and the promoter pins the digest of what the tag names, for a
# multi-architecture image the manifest list. Nothing here is computed or guessed; this
# machine cannot reach the registry to re-check. To add a release, copy its two rows from that
# file and name the commit here.
RELEASES: dict[str, dict[str, str]] = {
    "0.36.0": {
        "proxy-server": "sha256:61b6bfed89291cbee0dd0d5f9bb4982c6989059b15398690cd89e830ac29f1b7",
        "proxy-agent": "sha256:5f534dd5f02a751bfc6cb9d2d2342c622d37ba9e8c6851768769ed8a9081b915",
    },
    "0.35.0": {
        "proxy-server": "sha256:96df21e70519a6b65b2b2b1a4647dd76e89202b4b1a23f470ccec208b4cee1d6",
        "proxy-agent": "sha256:85b9fb116fbedfcba0243068234fba5f78fd4d45791286b6b74656e60af0c2f5",
    },
    "0.34.0": {
        "proxy-server": "sha256:3d59d59ffa7b8acb8ca56af02b88d64551bbfabcbca10c3e413f36402fe406bd",
        "proxy-agent": "sha256:8cc86d24691c4145d1c364eb0846e8865f98b5beab1e6e21b96ceb4dff6fce54",
    },
}

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
GZIP_LAYER_TYPES = ("application/vnd.oci.image.layer.v1.tar+gzip",
                    "application/vnd.docker.image.rootfs.diff.tar.gzip")
TAR_LAYER_TYPES = ("application/vnd.oci.image.layer.v1.tar",)


def supported_versions() -> tuple[str, ...]:
    return tuple(RELEASES)


def release_for(version: str) -> dict[str, str] | None:
    """The pinned index digests (name -> "sha256:...") of exactly this version ("0.36.0"; not
    "v0.36.0"), or None."""
    return RELEASES.get(version)


def pinned_digest(name: str, version: str) -> str:
    """The pinned index digest of `name` at `version`; one clear line if there is none."""
    release = release_for(version)
    if release is None or name not in release:
        known = ", ".join(supported_versions()) or "none"
        raise ConfigError(f"Konnectivity {version} has no pinned {name} image digest "
                          f"(pinned versions: {known}); use a pinned version or add its rows "
                          "to bootstrap/egress/konnectivity_release.py from the image "
                          "promoter's images.yaml")
    return release[name]


def marker_path(name: str, marker_dir: str = MARKER_DIR) -> str:
    return f"{marker_dir}/konnectivity-{name}"


def marker_line(name: str, version: str, digest: str) -> str:
    """The marker's content (without the newline) for a host that has this binary."""
    return f"{name} {version} {digest}"


# Run by python3 on the host, on bytes already checked against a digest. argv: label, file,
# arch. Prints the digest of the index's linux/<arch> manifest.
_PICK_MANIFEST = f"INDEX_TYPES = {json.dumps(INDEX_TYPES)}\n" + """\
import json, re, sys
label, path, arch = sys.argv[1:4]
doc = json.load(open(path, "rb"))
if doc.get("mediaType", INDEX_TYPES[0]) not in INDEX_TYPES \\
        or not isinstance(doc.get("manifests"), list):
    sys.exit(label + ": the pinned digest names no image index (mediaType %r)"
             % doc.get("mediaType"))
found = [m.get("digest", "") for m in doc["manifests"]
         if (m.get("platform") or {}).get("os") == "linux"
         and m["platform"].get("architecture") == arch]
if not found:
    sys.exit(label + ": the image index has no linux/" + arch + " manifest")
if not re.fullmatch(r"sha256:[0-9a-f]{64}", found[0]):
    sys.exit(label + ": unsupported manifest digest " + repr(found[0]))
print(found[0])
"""

# argv: label, file. Prints "<digest> gz|tar" for every layer of a platform manifest.
_LIST_LAYERS = (f"MANIFEST_TYPES = {json.dumps(MANIFEST_TYPES)}\n"
                f"GZIP_LAYER_TYPES = {json.dumps(GZIP_LAYER_TYPES)}\n"
                f"TAR_LAYER_TYPES = {json.dumps(TAR_LAYER_TYPES)}\n") + """\
import json, re, sys
label, path = sys.argv[1:3]
doc = json.load(open(path, "rb"))
if doc.get("mediaType", MANIFEST_TYPES[0]) not in MANIFEST_TYPES \\
        or not isinstance(doc.get("layers"), list):
    sys.exit(label + ": the platform digest names no image manifest (mediaType %r)"
             % doc.get("mediaType"))
for layer in doc["layers"]:
    digest, media = layer.get("digest", ""), layer.get("mediaType", "")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        sys.exit(label + ": unsupported layer digest " + repr(digest))
    if media in GZIP_LAYER_TYPES:
        print(digest, "gz")
    elif media in TAR_LAYER_TYPES:
        print(digest, "tar")
    else:
        sys.exit(label + ": layer " + digest + " has unsupported media type " + repr(media))
"""


def install_script(name: str, version: str, digest: str, arch: str,
                   registry: str = REGISTRY, install_dir: str = INSTALL_DIR,
                   marker_dir: str = MARKER_DIR) -> str:
    """POSIX sh (curl, sha256sum, tar, python3) that installs `<install_dir>/<name>` from the
    image whose index has `digest`, for linux/`arch`, unless the marker says it is there.

    Nothing is installed unless the index, the platform manifest and every layer match their
    digests; a mismatch exits 1 with one line naming what did not match. The marker is
    removed before the binary is replaced and written last."""
    if name not in NAMES:
        raise ValueError(f"unknown Konnectivity binary {name!r}; one of {', '.join(NAMES)}")
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"{name}: digest {digest!r} is not sha256:<64 hex digits>")
    if not _VERSION.fullmatch(version):
        raise ValueError(f"{name}: version {version!r} is not X.Y.Z")
    if arch not in ARCHES:
        raise ValueError(f"{name}: architecture {arch!r} has no pinned image; one of "
                         f"{', '.join(ARCHES)}")
    if not registry.startswith(("https://", "http://")):
        raise ValueError(f"registry {registry!r} must be an http(s):// URL")
    q = shlex.quote
    base = f"{registry.rstrip('/')}/v2/{REPOSITORY}/{name}"
    scheme = registry.split(":", 1)[0]
    label = f"{name} {version}"
    final, temp = f"{install_dir}/{name}", f"{install_dir}/.{name}.mzk"
    mark = marker_path(name, marker_dir)
    line = marker_line(name, version, digest)
    return "\n".join([
        "set -eu",
        f"label={q(label)} base={q(base)} bin={q(final)} tmpbin={q(temp)}",
        f"mark={q(mark)} line={q(line)} pinned={q(digest)} arch={q(arch)}",
        'if [ -x "$bin" ] && [ -f "$mark" ] && [ "$(cat "$mark")" = "$line" ]; then',
        '  echo "$label: already installed ($pinned)"; exit 0',
        "fi",
        "work=$(mktemp -d)",
        'trap \'rm -rf "$work"; rm -f "$tmpbin" "$mark.tmp"\' EXIT',
        "trap 'exit 1' HUP INT TERM",
        # -L: registry.k8s.io redirects to the mirror that serves the bytes; redirects may not
        # leave the registry's scheme.
        f"get() {{ curl -fsSL --retry 3 --proto ={scheme} --proto-redir ={scheme} \"$@\""
        " < /dev/null; }",
        "check() {",
        "  got=\"sha256:$(sha256sum < \"$1\" | cut -d' ' -f1)\"",
        '  [ "$got" = "$2" ] || { echo "$label: $3 did not match its digest'
        ' (expected $2, got $got); nothing installed" >&2; exit 1; }',
        "}",
        f"get -H {q('Accept: ' + ', '.join(INDEX_TYPES))} -o \"$work/index\" "
        '"$base/manifests/$pinned"',
        'check "$work/index" "$pinned" "image index"',
        f"manifest=$(python3 -c {q(_PICK_MANIFEST)} \"$label\" \"$work/index\" \"$arch\")",
        f"get -H {q('Accept: ' + ', '.join(MANIFEST_TYPES))} -o \"$work/manifest\" "
        '"$base/manifests/$manifest"',
        'check "$work/manifest" "$manifest" "linux/$arch manifest $manifest"',
        f"python3 -c {q(_LIST_LAYERS)} \"$label\" \"$work/manifest\" > \"$work/layers\"",
        'mkdir "$work/root"',
        "found=",
        "while read -r layer kind; do",
        '  get -o "$work/layer" "$base/blobs/$layer"',
        '  check "$work/layer" "$layer" "layer $layer"',
        '  z=; [ "$kind" = gz ] && z=z',
        f'  member=$(tar -t${{z}}f "$work/layer" | grep -x -e {q(name)} -e {q("./" + name)}'
        " | tail -n 1)",
        '  if [ -n "$member" ]; then',
        f'    rm -f "$work/root/{name}"',
        '    tar -x${z}f "$work/layer" -C "$work/root" "$member"',
        "    found=$layer",
        "  fi",
        'done < "$work/layers"',
        f'if [ -z "$found" ] || [ -L "$work/root/{name}" ] || [ ! -f "$work/root/{name}" ]; then',
        f'  echo "$label: no regular file /{name} in the image\'s layers; nothing installed" >&2',
        "  exit 1",
        "fi",
        'mkdir -p "$(dirname "$bin")" "$(dirname "$mark")"',
        'rm -f "$mark"',
        f'install -m 0755 "$work/root/{name}" "$tmpbin"',
        'mv -f "$tmpbin" "$bin"',
        'printf \'%s\\n\' "$line" > "$mark.tmp"',
        'mv -f "$mark.tmp" "$mark"',
        'echo "$label: installed $bin from $pinned (linux/$arch)"',
    ]) + "\n"
