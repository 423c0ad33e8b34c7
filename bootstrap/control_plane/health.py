"""`check` for the control plane: one command per control-plane host, a pure parser.

Per host: the API server's /readyz (anonymous, certificate verified against the cluster
CA, as the load balancers ask), its version, the controller-manager's and scheduler's
/healthz on loopback, who holds each leader lease, and whether the host's own zone
endpoint and the regional endpoint answer /readyz by their DNS names, as kubelets and
users reach them.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from bootstrap.control_plane.config import ADMIN_CONF, CONTROLLER_MANAGER_PORT, SCHEDULER_PORT
from bootstrap.inventory import Host, Inventory
from bootstrap.pki.table import CA_BY_NAME
from bootstrap.steps.egress import check_script

CA_CERT = CA_BY_NAME["kubernetes-ca"].cert_path
LEASES = ("kube-controller-manager", "kube-scheduler")


def _code(url: str, verify: bool = True) -> str:
    tls = f"--cacert {CA_CERT}" if verify else "-k"
    return (f"$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 {tls} "
            f"{shlex.quote(url)} 2>/dev/null)")


def script(inventory: Inventory, host: Host, kubectl: str) -> str:
    port = inventory.cluster.api_port
    zone = inventory.zone(host.zone).endpoint
    k = f"{shlex.quote(kubectl)} --kubeconfig={ADMIN_CONF} --request-timeout=3s"
    leases = " ".join(LEASES)
    return "\n".join([
        f"echo \"readyz {_code(f'https://{host.address}:{port}/readyz')}\"",
        f"echo \"controller-manager {_code(f'https://127.0.0.1:{CONTROLLER_MANAGER_PORT}/healthz', False)}\"",  # noqa: E501
        f"echo \"scheduler {_code(f'https://127.0.0.1:{SCHEDULER_PORT}/healthz', False)}\"",
        f"echo \"endpoint:{zone.name} {_code(zone.url + '/readyz')}\"",
        f"echo \"endpoint:{inventory.regional_endpoint.name} "
        f"{_code(inventory.regional_endpoint.url + '/readyz')}\"",
        f"echo \"version $({k} version -o json 2>/dev/null | tr -d ' \\n')\"",
        f"echo \"leases $({k} get lease -n kube-system {leases} -o json 2>/dev/null "
        "| tr -d ' \\n')\"",
    ]) + "\n" + check_script(inventory, host)


@dataclass
class Health:
    ready: bool = False
    version: str = "?"
    components: dict[str, bool] = field(default_factory=dict)
    endpoints: dict[str, bool] = field(default_factory=dict)
    leases: dict[str, str] = field(default_factory=dict)  # lease -> holder host
    egress: str = "?"  # the mode
    egress_total: int = 0  # nodes this host's egress should reach
    egress_reached: int = 0
    egress_down: list[str] = field(default_factory=list)  # "node-3: why"

    @property
    def healthy(self) -> bool:
        return (self.ready and all(self.components.values()) and all(self.endpoints.values())
                and self.egress_reached == self.egress_total)

    def phrase(self) -> str:
        parts = [f"apiserver {'ready' if self.ready else 'NOT READY'} {self.version}"]
        parts += [f"{name} {'healthy' if ok else 'DOWN'}"
                  for name, ok in self.components.items()]
        parts += [f"holds {lease.removeprefix('kube-')} lease"
                  for lease, holder in sorted(self.leases.items()) if holder]
        parts += [f"{name} {'answers' if ok else 'DOES NOT ANSWER'}"
                  for name, ok in self.endpoints.items()]
        parts.append(f"egress {self.egress} reaches {self.egress_reached}/{self.egress_total} "
                     "nodes" + "".join(f" (UNREACHABLE {d})" for d in self.egress_down))
        return ", ".join(parts)


def parse(text: str, host: str) -> Health:
    health = Health()
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "readyz":
            health.ready = value.strip() == "200"
        elif key in ("controller-manager", "scheduler"):
            health.components[key] = value.strip() == "200"
        elif key.startswith("endpoint:"):
            health.endpoints[key.removeprefix("endpoint:")] = value.strip() == "200"
        elif key == "version":
            try:
                health.version = json.loads(value)["serverVersion"]["gitVersion"]
            except (ValueError, KeyError, TypeError):
                pass
        elif key == "egress":
            mode, _, total = value.strip().partition(" ")
            health.egress = mode
            health.egress_total = int(total) if total.isdigit() else 0
        elif key == "egress-agents":
            health.egress_reached = int(value) if value.strip().isdigit() else 0
        elif key == "egress-line":
            node, _, state = value.strip().partition(": ")
            if state.startswith("tunnel up"):
                health.egress_reached += 1
            elif state.startswith("tunnel down"):
                health.egress_down.append(f"{node}: {state.partition(': ')[2] or state}")
        elif key == "leases":
            try:
                items = json.loads(value)["items"]
            except (ValueError, KeyError, TypeError):
                items = []
            for item in items:
                holder = str(item.get("spec", {}).get("holderIdentity", ""))
                health.leases[item["metadata"]["name"]] = (
                    holder if holder.split("_")[0] == host else "")
    return health
