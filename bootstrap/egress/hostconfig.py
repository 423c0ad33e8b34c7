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
"""

from __future__ import annotations

from bootstrap.inventory import Host, Inventory
from bootstrap.pki.table import flag_words

SOCKET_DIR = "/var/lib/mzk/egress"  # persistent: it must exist before a service restarts
SOCKET = f"{SOCKET_DIR}/egress.sock"
SELECTOR = "/etc/kubernetes/egress-selector.yaml"
AGENT_PORT = 8132
ADMIN_PORT = 8133
HEALTH_PORT = 8134
AGENT_ADMIN_PORT = 8094
AGENT_HEALTH_PORT = 8093
KUBELET_PORT = 10250

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


def proxy_agent_command(inventory: Inventory, host: Host, binary: str) -> list[str]:
    return [
        binary,
        f"--agent-id={host.name}",
        f"--agent-identifiers={agent_identifiers(host)}",
        f"--proxy-server-host={inventory.zone(host.zone).endpoint.name}",
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
