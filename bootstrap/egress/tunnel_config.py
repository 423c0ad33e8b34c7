"""The tunnel service's configuration: the JSON file read, checked and typed.

A module of its own so that every mistake in the file is found in one place and named by its
setting (the keys are documented in tunnel_service).

Shipped to the control-plane hosts beside the tunnel service (its COMPANIONS) and run by their
python3 (3.9+): standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any


class ConfigError(Exception):
    """The configuration file is missing, not JSON or has a bad setting (exit code 2)."""


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    ssh_port: int
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Config:
    socket: str
    status: str
    identity: str
    known_hosts: str
    control_dir: str
    user: str
    connect_timeout: float
    nodes: tuple[Node, ...]
    ssh: str = "ssh"
    keepalive: float = 5.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0


# sun_path holds 108 bytes; ssh binds `<ControlPath>.<16 random characters>` first.
MAX_CONTROL_PATH = 100 - 17
_MISSING = object()


def _setting(raw: dict[str, Any], key: str, kinds: tuple[type, ...], where: str,
             default: Any = _MISSING) -> Any:
    if key not in raw:
        if default is _MISSING:
            raise ConfigError(f"{where}: `{key}` is missing")
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where}: `{key}` must be {names}, not {value!r}")
    return value


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{where}: {value!r} is not a TCP port (1-65535)")
    return value


def host_key(host: str) -> str:
    """One spelling per address, so `10.0.0.1`, `[::1]` and `::0:1` match their node."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


def parse_config(raw: Any, source: str) -> Config:
    """The configuration from parsed JSON; every problem names the setting."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a JSON object")
    paths = {key: _setting(raw, key, (str,), source)
             for key in ("socket", "status", "identity", "known_hosts", "control_dir")}
    nodes = []
    raw_nodes = _setting(raw, "nodes", (list,), source)
    for i, item in enumerate(raw_nodes):
        where = f"{source}: nodes[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be an object")
        ports = _setting(item, "ports", (list,), where)
        nodes.append(Node(
            name=_setting(item, "name", (str,), where),
            address=_setting(item, "address", (str,), where),
            ssh_port=_port(_setting(item, "ssh_port", (int,), where, 22), where),
            ports=tuple(sorted({_port(p, f"{where}.ports") for p in ports}))))
    for attr in ("name", "address"):
        seen: set[str] = set()
        for n in nodes:
            value = getattr(n, attr) if attr == "name" else host_key(n.address)
            if value in seen:
                raise ConfigError(f"{source}: two nodes have the {attr} {value!r}")
            seen.add(value)
    config = Config(
        **paths, nodes=tuple(nodes),
        user=_setting(raw, "user", (str,), source),
        connect_timeout=float(_setting(raw, "connect_timeout", (int, float), source)),
        ssh=_setting(raw, "ssh", (str,), source, "ssh"),
        keepalive=float(_setting(raw, "keepalive", (int, float), source, 5.0)),
        backoff_min=float(_setting(raw, "backoff_min", (int, float), source, 0.5)),
        backoff_max=float(_setting(raw, "backoff_max", (int, float), source, 30.0)))
    longest = control_path(config, max(len(nodes) - 1, 0))
    if len(longest.encode()) > MAX_CONTROL_PATH:
        raise ConfigError(f"{source}: `control_dir` is too long for a socket path "
                          f"({longest!r}); use a shorter directory")
    if config.connect_timeout <= 0 or config.backoff_min <= 0 or config.keepalive < 1:
        raise ConfigError(f"{source}: connect_timeout and backoff_min must be positive, "
                          "keepalive at least 1")
    return config


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON: {e}") from e
    return parse_config(raw, path)


def control_path(config: Config, index: int) -> str:
    return os.path.join(config.control_dir, str(index))
