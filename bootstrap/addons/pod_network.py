"""The pod network agent's read access to Nodes (cluster.cni: bridge).

Each node's agent (bootstrap.node.pod_network) reads every Node's address and pod CIDR with
its node's own kubelet credential. Since the Node authorizer lets a kubelet read only its
own Node object, the group `system:nodes` gets get/list/watch on Nodes, nothing else: what
every node's network plugin needs, and no write of any kind.
"""

from __future__ import annotations

from typing import Any

from bootstrap.addons.context import AddonContext

ADDON = "pod-network"
ROLE = "multizone-k8s:pod-network"
GROUP = "rbac.authorization.k8s.io"


def manifests(ctx: AddonContext) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/managed-by": "multizone-k8s", "mzk.io/addon": ADDON}
    role = {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRole",
            "metadata": {"name": ROLE, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["nodes"],
                       "verbs": ["get", "list", "watch"]}]}
    binding = {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": ROLE, "labels": labels},
               "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": ROLE},
               "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": "system:nodes"}]}
    return [role, binding]
