"""The egress path's files and command lines, as pure functions (no SSH).

Both modes give the API server the same door: an `HTTPConnect` proxy on one Unix socket,
`SOCKET`, named by the egress selector for `cluster` traffic (`controlplane` and `etcd` stay
direct). In `ssh-tunnel` mode our tunnel service listens there; in `konnectivity` mode the
proxy-server does. So the API server's configuration is the same in both modes, and a
switch replaces only the service behind the socket, one control-plane host at a time.

Konnectivity choices:
- proxy-server per control-plane host: `--server-id` is the host's name, `--server-count`
  the number of control-plane hosts; agents on 8132 (TLS, client certificates of our
  Konnectivity CA only), health on 8134 (the load balancer's check), admin (metrics) on
  loopback 8133.
- proxy-agent per node: dials its zone's endpoint on 8132, behind which are the servers of
  every zone (unlike the API port, this port balances across zones: an agent that reached
  only its own zone's server would leave the other API servers without a way to its node),
  and, with `--sync-forever`, keeps dialing until it holds a connection to each server, also
  after a server restarts; identified by its node's name and address (`--agent-identifiers`), and
  the servers route by destination host only (`destHost`): a dial for a node goes to that
  node's agent or fails, never through another node.
- the agent's credential is its node's kubelet client certificate (cluster CA), the same on
  every node: on inventory nodes the one our PKI issues (apply writes it, certificate and
  key, to `KUBELET_CLIENT_PEM`); on auto-scaled nodes the one the kubelet obtained by TLS
  bootstrapping after the identity checks, at the same path (the kubelet's own file, a link
  it replaces on rotation). The proxy-servers verify agents against the cluster CA. The
  agent starts once the file exists and restarts when its content changes (checked every
  `CREDENTIAL_CHECK_S`), so a rotated certificate is picked up without losing the node.
"""

from __future__ import annotations

from bootstrap.inventory import Host, Inventory
from bootstrap.pki.table import KUBELET_CLIENT_PEM, flag_words
from bootstrap.services import Service

SOCKET_DIR = "/var/lib/mzk/egress"  # persistent: it must exist before a service restarts
SOCKET = f"{SOCKET_DIR}/egress.sock"
SELECTOR = "/etc/kubernetes/egress-selector.yaml"
AGENT_PORT = 8132
ADMIN_PORT = 8133
HEALTH_PORT = 8134
AGENT_ADMIN_PORT = 8094
AGENT_HEALTH_PORT = 8093
KUBELET_PORT = 10250
CREDENTIAL_CHECK_S = 5

PROXY_SERVER = "konnectivity-server"  # service names
PROXY_AGENT = "konnectivity-agent"
TUNNEL = "mzk-egress-tunnel"


def selector_config() -> bytes:
    return ("apiVersion: apiserver.k8s.io/v1beta1\n"
            "kind: EgressSelectorConfiguration\n"
            "# Connections to nodes, pods and services go through this host's egress\n"
            "# service (ssh-tunnel or Konnectivity, the same socket); the rest stays direct.\n"
            "egressSelections:\n"
            "- name: cluster\n"
            "  connection:\n"
            "    proxyProtocol: HTTPConnect\n"
            "    transport:\n"
            "      uds:\n"
            f"        udsName: {SOCKET}\n"
            "- name: controlplane\n"
            "  connection:\n"
            "    proxyProtocol: Direct\n"
            "- name: etcd\n"
            "  connection:\n"
            "    proxyProtocol: Direct\n").encode()


def proxy_server_command(inventory: Inventory, host: Host, binary: str) -> list[str]:
    return [
        binary,
        f"--server-id={host.name}",
        f"--server-count={len(inventory.control_plane)}",
        "--mode=http-connect",
        f"--uds-name={SOCKET}",
        "--delete-existing-uds-file",
        "--server-port=0",
        f"--agent-bind-address={host.address}",
        f"--agent-port={AGENT_PORT}",
        "--admin-bind-address=127.0.0.1",
        f"--admin-port={ADMIN_PORT}",
        f"--health-bind-address={host.address}",
        f"--health-port={HEALTH_PORT}",
        *flag_words("proxy-server"),
        "--proxy-strategies=destHost",
        "--keepalive-time=30s",
        "--tls-min-version=VersionTLS12",
    ]


def agent_identifiers(host: Host) -> str:
    """URL-encoded identifiers: the names and addresses a dial may ask for."""
    ips = dict.fromkeys((host.address, host.advertise_address))
    family = {True: "ipv6", False: "ipv4"}
    return "&".join([f"host={host.name}", *(f"{family[':' in ip]}={ip}" for ip in ips)])


# The agent's start, as `sh -c` (one line: a unit's ExecStart): wait for the credential
# (an auto-scaled node's kubelet gets it some seconds after boot), run the agent, and end
# (the keeper starts it again) when the credential's content changed. Stopping it stops the
# agent: TERM, then KILL after `AGENT_STOP_S` (on its first TERM the proxy-agent drains, and
# may wait for ever), so no agent outlives its keeper's stop.
AGENT_STOP_S = 2
AGENT_START = (
    'c=$1; shift; until [ -s "$c" ]; do sleep 1; done; s=$(cksum < "$c"); "$@" & a=$!; '
    'halt() { kill -TERM $a 2>/dev/null; i=0; '
    f'while kill -0 $a 2>/dev/null && [ $i -lt {AGENT_STOP_S * 10} ]; do '
    'sleep 0.1; i=$((i+1)); done; kill -KILL $a 2>/dev/null; wait $a; }; '
    "trap 'halt; exit 143' TERM INT; "
    f'while kill -0 $a 2>/dev/null; do sleep {CREDENTIAL_CHECK_S} & wait $!; '
    '[ "$(cksum < "$c")" = "$s" ] && continue; '
    'echo "konnectivity-agent: $c changed: restarting with it"; '
    'halt; exit 0; done; wait $a')


def proxy_agent_command(inventory: Inventory, host: Host, binary: str) -> list[str]:
    """An inventory node's agent (`agent_command` with what the inventory says)."""
    return agent_command(binary, host.name, agent_identifiers(host),
                         inventory.zone(host.zone).endpoint.name)


def agent_command(binary: str, name: str, identifiers: str, server_host: str) -> list[str]:
    """Every node's agent, inventory or auto-scaled (the user data passes placeholders for
    the name and address, filled in on the node)."""
    return [
        "/bin/sh", "-c", AGENT_START, "mzk-agent-start", KUBELET_CLIENT_PEM,
        binary,
        f"--agent-id={name}",
        f"--agent-identifiers={identifiers}",
        f"--proxy-server-host={server_host}",
        f"--proxy-server-port={AGENT_PORT}",
        *flag_words("proxy-agent"),
        "--sync-forever",
        "--sync-interval=1s",
        "--sync-interval-cap=5s",
        "--probe-interval=1s",
        "--keepalive-time=30s",
        "--admin-bind-address=127.0.0.1",
        f"--admin-server-port={AGENT_ADMIN_PORT}",
        "--health-server-host=127.0.0.1",
        f"--health-server-port={AGENT_HEALTH_PORT}",
    ]


def agent_service(command: list[str], inputs: str) -> Service:
    """The agent as a service, one definition for every node (`inputs`: what changes the
    unit, hence restarts the agent)."""
    return Service(name=PROXY_AGENT, command_line=command, env={"MZK_INPUTS": inputs},
                   after=("kubelet",),
                   description="Konnectivity agent: the control plane's way to this node")
