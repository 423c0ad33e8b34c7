"""What the ssh-tunnel egress needs on hosts, as text: pure functions, no SSH.

- a node's `authorized_keys` line for a control-plane host's tunnel key: the key may only
  forward to the node's own address on the allowed ports, nothing else (no shell, no pty,
  no agent or X11, no remote forwarding; sshd enforces it);
- the pinned `known_hosts` the service trusts, from the inventory's host keys;
- the service's JSON configuration (documented in `tunnel_service`).

Inputs are checked by the inventory already; here only what would corrupt a file is refused:
a newline (or a double quote inside an option) would start a new, unrestricted line.
Placing the files on hosts is a separate step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bootstrap.ssh_host_keys import known_name

SOCKET = "/run/mzk/egress/tunnel.sock"
STATUS = "/run/mzk/egress/tunnel-status.json"
IDENTITY = "/etc/mzk/egress/tunnel.key"
KNOWN_HOSTS = "/etc/mzk/egress/known_hosts"
CONTROL_DIR = "/run/mzk/egress/ctl"
FORCED_COMMAND = "/bin/false"
# authorized_keys has no `permitlisten="none"`; a port below 1024 cannot be bound by a
# non-root login, so pinning remote forwarding to this one makes every `-R` fail.
NO_LISTEN = "127.0.0.1:1"


@dataclass(frozen=True)
class TunnelNode:
    """A node as the service sees it: where its SSH is and which ports tunnels may reach."""

    name: str
    address: str
    ssh_port: int
    ports: Sequence[int]


def _one_line(what: str, text: str) -> str:
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"{what} contains a line break: {text!r}")
    return text


def _host_port(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"


def authorized_keys_line(public_key: str, address: str, ports: Iterable[int],
                         comment: str) -> str:
    """`restrict,port-forwarding,permitopen="addr:port",...,permitlisten="127.0.0.1:1",
    command="/bin/false" type key comment`, without a newline.

    `restrict` takes everything away (and whatever later OpenSSH versions add to it);
    `port-forwarding` gives back forwarding in both directions: `permitopen` pins local
    forwarding (what tunnels use) to this node's own address and ports, and `permitlisten`
    pins remote forwarding to a privileged port, which sshd refuses to a non-root login
    (for root it is one port on loopback, not any: log in as a dedicated user)."""
    parts = _one_line("public key", public_key).split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key line: {public_key!r}")
    allowed = sorted(set(ports))
    if not allowed:
        raise ValueError(f"no ports to allow for {address}")
    for text in (address, comment):
        if '"' in _one_line("address or comment", text):
            raise ValueError(f"a double quote would end an option early: {text!r}")
    options = ["restrict", "port-forwarding"]
    options += [f'permitopen="{_host_port(address, p)}"' for p in allowed]
    options += [f'permitlisten="{NO_LISTEN}"', f'command="{FORCED_COMMAND}"']
    line = f"{','.join(options)} {parts[0]} {parts[1]}"
    return f"{line} {comment}" if comment else line


def known_hosts(entries: Iterable[tuple[str, int, str]]) -> bytes:
    """The pinned known_hosts: one `name type key` line per (address, ssh port, host key),
    where name is `addr`, or `[addr]:port` off port 22 (as ssh looks it up)."""
    lines = []
    for address, port, key in entries:
        parts = _one_line(f"host key of {address}", key).split()
        if len(parts) < 2:
            raise ValueError(f"host key of {address} is not `<type> <base64>`: {key!r}")
        name = known_name(_one_line("address", address), port)
        lines.append(f"{name} {parts[0]} {parts[1]}\n")
    return "".join(lines).encode()


def service_config(nodes: Iterable[TunnelNode], *, user: str, connect_timeout: float = 5,
                   socket: str = SOCKET, status: str = STATUS, identity: str = IDENTITY,
                   known_hosts_file: str = KNOWN_HOSTS,
                   control_dir: str = CONTROL_DIR) -> bytes:
    """The service's configuration file (JSON, keys as `tunnel_service` documents them)."""
    config = {
        "socket": socket, "status": status, "identity": identity,
        "known_hosts": known_hosts_file, "control_dir": control_dir, "user": user,
        "connect_timeout": connect_timeout,
        "nodes": [{"name": n.name, "address": n.address, "ssh_port": n.ssh_port,
                   "ports": sorted(set(n.ports))} for n in nodes],
    }
    return (json.dumps(config, indent=2) + "\n").encode()
