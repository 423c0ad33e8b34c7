"""The bootstrap action: one ordered list of steps, read top to bottom.

Each module holds one step (or two closely related ones); `ACTION` is what `apply` and
`plan` run.
"""

from bootstrap.steps.addons import ADDONS
from bootstrap.steps.binaries import BINARIES
from bootstrap.steps.cluster_objects import CLUSTER_OBJECTS
from bootstrap.steps.control_plane import CONTROL_PLANE, CONTROL_PLANE_RETIRE
from bootstrap.steps.egress import EGRESS, EGRESS_RETIRE
from bootstrap.steps.egress_nodes import EGRESS_NODES, EGRESS_NODES_RETIRE
from bootstrap.steps.etcd import ETCD, ETCD_RETIRE
from bootstrap.steps.etcd_volume import ETCD_VOLUME
from bootstrap.steps.facts import FACTS
from bootstrap.steps.guard import LOCK, TRUST
from bootstrap.steps.node_join import APPROVER_STEP, JOIN_OBJECTS
from bootstrap.steps.nodes import NODES, NODES_ADMIT
from bootstrap.steps.pki import PLACE_PKI
from bootstrap.steps.pod_network import POD_NETWORK
from bootstrap.steps.preflight import PREFLIGHT
from bootstrap.steps.ssh_access import SSH_ACCESS

ACTION = (FACTS, LOCK, TRUST, PREFLIGHT, SSH_ACCESS, BINARIES, PLACE_PKI, ETCD_VOLUME, ETCD,
          ETCD_RETIRE, CONTROL_PLANE, EGRESS_NODES, EGRESS, EGRESS_NODES_RETIRE, EGRESS_RETIRE,
          CLUSTER_OBJECTS, JOIN_OBJECTS, APPROVER_STEP, NODES, POD_NETWORK, NODES_ADMIT,
          ADDONS, CONTROL_PLANE_RETIRE)

__all__ = ["ACTION"]
