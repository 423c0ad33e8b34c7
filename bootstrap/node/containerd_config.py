"""containerd's config.toml for a node (containerd 1.6, config `version = 2`).

`render(kind, ...)` is pure: it returns the file's text; placing it on a host is a separate
step. The choices, and why:

- `version = 2`: the format containerd 1.6 (Debian 12's) reads and 1.7 still accepts; the
  CRI plugin's section is `plugins."io.containerd.grpc.v1.cri"`.
- `root`, `state`, `grpc.address`: containerd's defaults (/var/lib/containerd,
  /run/containerd, /run/containerd/containerd.sock) on a real host; overridable because
  the lab runs one containerd per lab host on one machine, each needing its own. The
  socket path is checked against the 107-byte limit of a Unix socket address, which
  containerd would otherwise report only when it fails to start.
- `sandbox_image`: our own locally built pause image (bootstrap.node.pause_image), since
  no registry is reachable; the CRI plugin would otherwise try to pull the upstream one.
- runc through the `io.containerd.runc.v2` shim as the only and default runtime, with its
  state (`Root`) in `<state>/runc`: on a real host that is runc's default
  (/run/containerd/runc); in the lab it keeps each node's containers out of the others'.
- `opt` plugin `path`: containerd's default /opt/containerd on a real host; the lab gives
  each node its own (the plugin creates the directory at start).
- `SystemdCgroup`: true on real hosts (systemd is their init and the kubelet's cgroup
  driver must be `systemd` to match), false in the lab (no systemd there: cgroupfs, and the
  kubelet must say `cgroupDriver: cgroupfs`; containerd 1.6 cannot tell the kubelet its
  driver, the kubelet takes it from its own configuration).
- `restrict_oom_score_adj`: true in the lab, whose sandbox lacks CAP_SYS_RESOURCE, so no
  process may lower its oom_score_adj below containerd's own; the CRI plugin then clamps
  the kubelet's requested values instead of runc failing to start the container. False on
  real hosts, where the kubelet's values (-997 for guaranteed pods) must hold.
- `snapshotter`: overlayfs, containerd's default; `native` is the fallback where overlay
  mounts are not possible.
- CNI `bin_dir` and `conf_dir`: the conventional /opt/cni/bin and /etc/cni/net.d;
  `conf_template` (optional): a network configuration template the CRI plugin renders
  into `conf_dir` once the kubelet hands it the node's pod CIDR (bootstrap.node.cni).
- `disabled_plugins = []`: nothing disabled. Plugins that cannot run on a host (btrfs,
  zfs, devmapper, aufs snapshotters) skip themselves with a log line; disabling them
  would only make this file depend on the containerd build.
"""

from __future__ import annotations

import json
import posixpath
from typing import Literal

from bootstrap.errors import ConfigError
from bootstrap.node import cni
from bootstrap.node.pause_image import DEFAULT_TAG
from bootstrap.services import Service

HostKind = Literal["real", "lab"]
KINDS: tuple[HostKind, ...] = ("real", "lab")

CONFIG_PATH = "/etc/containerd/config.toml"
DEFAULT_BINARY = "/usr/bin/containerd"  # the distribution's package
DEFAULT_ROOT = "/var/lib/containerd"
DEFAULT_STATE = "/run/containerd"
DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_OPT = "/opt/containerd"
CNI_BIN_DIR = "/opt/cni/bin"
CNI_CONF_DIR = "/etc/cni/net.d"
SNAPSHOTTERS = ("overlayfs", "native")
UNIX_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, one for the terminating NUL

CRI = 'plugins."io.containerd.grpc.v1.cri"'
# The official sandbox image, pinned by its image index digest (registry.k8s.io).
UPSTREAM_PAUSE = ("registry.k8s.io/pause:3.10@sha256:"
                  "ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a")
LAB_OPT_DIR = "/var/lib/mzk/containerd-opt"  # /opt is this machine's, shared by lab hosts


def _string(value: str) -> str:
    """A TOML basic string: JSON's escapes (\\", \\\\, \\n, \\uXXXX) are TOML's too."""
    return json.dumps(value, ensure_ascii=False)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _absolute(setting: str, path: str) -> str:
    if not path.startswith("/") or posixpath.normpath(path) != path:
        raise ConfigError(f"containerd {setting} {path!r} is not a normalised absolute path; "
                          "give one like /var/lib/containerd")
    return path


def render(
    kind: HostKind,
    *,
    sandbox_image: str = DEFAULT_TAG,
    root: str = DEFAULT_ROOT,
    state: str = DEFAULT_STATE,
    address: str = DEFAULT_ADDRESS,
    cni_bin_dir: str = CNI_BIN_DIR,
    cni_conf_dir: str = CNI_CONF_DIR,
    snapshotter: str = "overlayfs",
    opt_dir: str = DEFAULT_OPT,
    cni_conf_template: str | None = None,
) -> str:
    """The text of config.toml for a host of `kind` ("real" or "lab"); see the module's
    docstring for each choice."""
    if kind not in KINDS:
        raise ConfigError(f"containerd host kind {kind!r} is unknown; use one of "
                          f"{', '.join(KINDS)}")
    if snapshotter not in SNAPSHOTTERS:
        raise ConfigError(f"containerd snapshotter {snapshotter!r} is not supported; use one "
                          f"of {', '.join(SNAPSHOTTERS)}")
    if not sandbox_image or any(c.isspace() for c in sandbox_image):
        raise ConfigError(f"containerd sandbox image {sandbox_image!r} is not an image "
                          "reference; give one like registry.k8s.io/pause:3.10-mzk")
    for setting, path in (("root", root), ("state", state), ("grpc address", address),
                          ("CNI bin_dir", cni_bin_dir), ("CNI conf_dir", cni_conf_dir),
                          ("opt path", opt_dir),
                          *((("CNI conf_template", cni_conf_template),)
                            if cni_conf_template is not None else ())):
        _absolute(setting, path)
    if len(address.encode()) > UNIX_PATH_MAX:
        raise ConfigError(f"containerd grpc address {address!r} is longer than a Unix socket "
                          f"path may be ({UNIX_PATH_MAX} bytes); choose a shorter path")
    lab = kind == "lab"
    return "\n".join([
        f"# containerd config for a {kind} host, written by multizone-k8s "
        "(bootstrap/node/containerd_config.py).",
        "version = 2",
        f"root = {_string(root)}",
        f"state = {_string(state)}",
        "disabled_plugins = []",
        "",
        "[grpc]",
        f"  address = {_string(address)}",
        "",
        f"[{CRI}]",
        f"  sandbox_image = {_string(sandbox_image)}",
        f"  restrict_oom_score_adj = {_bool(lab)}",
        "",
        f"[{CRI}.containerd]",
        f"  snapshotter = {_string(snapshotter)}",
        '  default_runtime_name = "runc"',
        "",
        f"[{CRI}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        "",
        f"[{CRI}.containerd.runtimes.runc.options]",
        f"  SystemdCgroup = {_bool(not lab)}",
        f"  Root = {_string(posixpath.join(state, 'runc'))}",
        "",
        f"[{CRI}.cni]",
        f"  bin_dir = {_string(cni_bin_dir)}",
        f"  conf_dir = {_string(cni_conf_dir)}",
        *([f"  conf_template = {_string(cni_conf_template)}"] if cni_conf_template else []),
        "",
        '[plugins."io.containerd.internal.v1.opt"]',
        f"  path = {_string(opt_dir)}",
        "",
    ])


def for_node(lab: bool, pod_network: bool) -> str:
    """A node's config.toml: the lab's own sandbox image or the pinned upstream one, our pod
    network template unless the cluster brings its own network plugin."""
    return render("lab" if lab else "real",
                  sandbox_image=DEFAULT_TAG if lab else UPSTREAM_PAUSE,
                  cni_bin_dir=cni.BIN_DIR, cni_conf_dir=cni.CONF_DIR,
                  cni_conf_template=cni.TEMPLATE_PATH if pod_network else None,
                  opt_dir=LAB_OPT_DIR if lab else DEFAULT_OPT)


def service(binary: str = DEFAULT_BINARY) -> Service:
    """containerd as a service of every node (inventory or joined): a restart must not kill
    the containers it started."""
    return Service(name="containerd", command_line=[binary, "--config", CONFIG_PATH],
                   keep_children=True, description="containerd: the nodes' container runtime")
