"""The ssh-tunnel egress service: the API server's HTTP CONNECT proxy to the nodes, over SSH.

Runs on every control-plane host. The kube-apiserver's egress selector (`HTTPConnect` over a
Unix socket) sends `CONNECT <node address>:<port>`; the service answers `200` and the socket
becomes a byte pipe to that port on the node, carried by SSH. Nodes keep their kubelet port
shut to the network; they only need to admit SSH from the control plane.

This file is copied to the hosts as is, its companions (COMPANIONS: the configuration,
the status, the mux protocol, the masters and the proxy) beside it as `<name>.py`, and
run with the system python3 (3.9 or later): standard library only, plus the OpenSSH
client.

    python3 tunnel_service.py --config /etc/mzk/egress/tunnel.json
    python3 tunnel_service.py --config /etc/mzk/egress/tunnel.json --check

`--check` prints one line per node (tunnel up, or down and why) and exits 1 unless every
node is up and the service answers on its socket.

Configuration, one JSON object:
  socket           the Unix socket the API server connects to; created mode 0600, its
                   directory 0700 if missing
  status           a JSON file rewritten (temporary file + rename) whenever a node's state
                   changes: {node: {"state": "up"|"down", "reason", "since": epoch, "address"}}
  identity         this host's tunnel private key (a key of its own per control-plane host)
  known_hosts      the nodes' pinned host keys (written from the inventory); nothing else is
                   trusted, an unknown or different key is refused, never learnt
  control_dir      where the SSH control sockets live (created 0700); sockets are named by
                   node index because a socket path is limited to about 100 bytes
  user             the login user on the nodes
  connect_timeout  seconds allowed to bring a node's SSH connection up, and to open a tunnel
  nodes            [{"name", "address", "ssh_port", "ports": [int, ...]}]: the only places
                   a tunnel may go (the node's own address, on one of its ports)
  optional:
  ssh              the OpenSSH client (default "ssh")
  keepalive        seconds between SSH keepalives (default 5); three missed ones end a master
  backoff_min      first delay before bringing a failed master up again (default 0.5 s),
  backoff_max      doubling up to this (default 30 s); it starts over once a master has
                   stayed up for backoff_max

How a tunnel is carried. One OpenSSH master (`ssh -M -N -S <control socket>`) per node,
started with the service and brought up again with exponential backoff whenever it ends or
cannot connect. For each CONNECT the service speaks OpenSSH's multiplexing protocol
(PROTOCOL.mux, MUX_C_NEW_STDIO_FWD) on the master's control socket and hands it the
accepted socket itself (SCM_RIGHTS); the master opens a `direct-tcpip` channel and copies
bytes between that socket and the channel. No process and no Python copy per tunnel, one SSH
connection per node however many tunnels. The control connection is held for the life of
the tunnel (the master ends the tunnel if it closes) and the master closes it when the
tunnel ends. The `200` is sent only once the node has opened the channel, so a refused
destination gets `502`, not an empty pipe. Allowed ports must carry protocols where the
client speaks first (TLS, HTTP): bytes from a server that speaks first could race the `200`.

The master holds the socket as two descriptors (its read and write side), so a half-close
from the node (end of stream while it still reads) is not passed on by itself: the API
server sees the end when the channel closes, which follows once the destination has closed
its socket (tens of milliseconds here). TLS (close_notify) does not depend on it.

Refusals: not CONNECT 405, malformed 400, not a node address or a port not allowed for that
node 403, the node's master not up 503 (the reason says why: the host key does not match
the pinned key, login refused, unreachable), the node refused the channel 502, no answer
504. One stderr line per tunnel opened or refused, `key=value`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import socket
import sys
import time

try:  # in the project
    from bootstrap.egress.tunnel_config import Config, ConfigError, load_config
    from bootstrap.egress.tunnel_proxy import Service
except ImportError:  # on a host: shipped beside mzk-egress-tunnel
    from tunnel_config import Config, ConfigError, load_config  # type: ignore[no-redef]
    from tunnel_proxy import Service  # type: ignore[no-redef]

# The modules shipped beside this program (bootstrap/egress/<name>.py as <name>.py).
COMPANIONS = ("tunnel_config", "tunnel_status", "tunnel_mux", "tunnel_masters", "tunnel_proxy")


def raise_file_limit() -> None:
    """Each tunnel costs a descriptor here and two in its master (which inherits this)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve(config: Config) -> None:
    service = Service(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


# ----------------------------------------------------------------------------- --check


def check(config: Config) -> int:
    """Print each node's tunnel state from the status file; 0 only if all is well."""
    problems = 0
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(config.socket)
        print(f"service: answering on {config.socket}")
    except OSError as e:
        print(f"service: not answering on {config.socket}: {e.strerror or e}")
        problems += 1
    finally:
        probe.close()
    try:
        with open(config.status, encoding="utf-8") as f:
            status = json.load(f)
    except (OSError, ValueError) as e:
        print(f"status: cannot read {config.status}: {e}")
        return 1
    for node in config.nodes:
        entry = status.get(node.name, {})
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.get("since", 0)))
        if entry.get("state") == "up":
            print(f"{node.name}: tunnel up since {since}")
        else:
            problems += 1
            print(f"{node.name}: tunnel down since {since}: "
                  f"{entry.get('reason', 'not in the status file')}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the service's JSON configuration")
    parser.add_argument("--check", action="store_true",
                        help="print each node's tunnel state and exit (1 unless all are up)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.check:
            return check(config)
        raise_file_limit()
        asyncio.run(serve(config))
    except ConfigError as e:
        print(f"tunnel-service: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
