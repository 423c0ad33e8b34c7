"""The cluster DNS scaling rule: how many CoreDNS replicas and how much memory for a cluster
of N nodes in Z zones.

One pure rule, read by both the renderer (bootstrap.addons.coredns, at `apply`) and the
autoscaler on the control plane (bootstrap.node.dns_autoscaler, as nodes come and go), so
the two never disagree and never undo each other's work.

- Replicas: one per `nodes_per_replica` nodes, at least one per zone (losing a zone keeps
  DNS in the others, and the zone spread constraint places one in each), at most
  `max_replicas`.
- Memory limit: seed 004's "addon limits grow with the cluster", on a coarse ladder so that
  it changes rarely (a change of resources rolls the Deployment; a change of replicas does
  not). CoreDNS's memory follows the Services, endpoints and pods it watches, which grow
  with the nodes.
- No CPU limit: a limit throttles CoreDNS in the bursts it exists to absorb (CFS quota turns
  them into query latency and timeouts across the cluster); the request guarantees its
  share, and spare CPU is better spent answering than idle.

Shipped to the control-plane hosts beside the autoscaler and imported there as the top-level
module `dns_scale` by their python3 (3.9+): standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FIELD_NODES = "cluster.dns.nodes_per_replica"
FIELD_MAX = "cluster.dns.max_replicas"
NODES_PER_REPLICA_RANGE = (1, 5000)
MAX_REPLICAS_HIGH = 1000
CPU_REQUEST = "100m"
MEMORY_REQUEST = "70Mi"
# (largest node count of the rung, memory limit); the last rung has no bound.
MEMORY_LADDER: tuple[tuple[int | None, str], ...] = (
    (100, "170Mi"), (500, "300Mi"), (2000, "600Mi"), (None, "1Gi"))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DnsRule:
    nodes_per_replica: int = 16
    max_replicas: int = 100

    def validate(self, zones: int) -> list[str]:
        """Every problem as one `field: problem; fix` line, for the inventory's reader."""
        problems = []
        low, high = NODES_PER_REPLICA_RANGE
        if not _whole(self.nodes_per_replica):
            problems.append(f"{FIELD_NODES}: expected a whole number, got "
                            f"{self.nodes_per_replica!r}; use {low}..{high}")
        elif not low <= self.nodes_per_replica <= high:
            problems.append(f"{FIELD_NODES}: {self.nodes_per_replica} is out of range; "
                            f"use {low}..{high}")
        floor = max(1, zones)
        if not _whole(self.max_replicas):
            problems.append(f"{FIELD_MAX}: expected a whole number, got "
                            f"{self.max_replicas!r}; use {floor}..{MAX_REPLICAS_HIGH}")
        elif self.max_replicas < floor:
            problems.append(f"{FIELD_MAX}: {self.max_replicas} is fewer than the {zones} "
                            f"zone(s), and one replica per zone keeps DNS when a zone is lost; "
                            f"use {floor}..{MAX_REPLICAS_HIGH}")
        elif self.max_replicas > MAX_REPLICAS_HIGH:
            problems.append(f"{FIELD_MAX}: {self.max_replicas} is out of range; "
                            f"use {floor}..{MAX_REPLICAS_HIGH}")
        return problems

    def replicas(self, nodes: int, zones: int) -> int:
        """One per `nodes_per_replica` nodes, at least one per zone (and one), at most
        `max_replicas`."""
        wanted = max(1, zones, math.ceil(max(0, nodes) / self.nodes_per_replica))
        return min(self.max_replicas, wanted)

    def resources(self, nodes: int) -> dict[str, dict[str, str]]:
        """The `coredns` container's resources for a cluster of `nodes` nodes (a new dict)."""
        return {"requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST},
                "limits": {"memory": memory_limit(nodes)}}


def memory_limit(nodes: int) -> str:
    for most, limit in MEMORY_LADDER:
        if most is None or nodes <= most:
            return limit
    raise AssertionError("the ladder's last rung has no bound")
