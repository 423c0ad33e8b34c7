"""kube-proxy: the Service virtual IPs on every node (seeds 000-002: the `kubernetes` Service
is "a virtual IP address redirected (via kube-proxy) to the HTTPS endpoint on the API
server"), rendered as plain manifests from an AddonContext.

Why it looks like this:
- A host-network DaemonSet, so that every node, auto-scaled ones included, runs it with
  nothing sent over SSH: the node only needs its kubelet.
- Least privilege without a certificate of ours: the ServiceAccount `kube-system/kube-proxy`
  is bound to the built-in ClusterRole `system:node-proxier` (which the API server keeps
  current for its own release), and the pod authenticates with its projected token, which
  client-go re-reads as the kubelet rotates it. No key to issue, ship or renew per node.
- Zone-affine as the kubelets are (seed 004: pods in zone A reach the control plane in zone
  A, whose endpoint fails over to the other zones): one ConfigMap and one DaemonSet per zone,
  `kube-proxy-<zone>`, selecting that zone's nodes by `topology.kubernetes.io/zone` (which
  every kubelet sets) and pointing kube-proxy at that zone's endpoint. The DaemonSets'
  selectors include the zone, so they never fight over a pod.
- `dnsPolicy: Default`: cluster DNS is reached through the Services kube-proxy programs, so
  kube-proxy must not depend on it (ClusterFirstWithHostNet would).
- Privileged (it programs nftables), `system-node-critical`, tolerates every taint: a node
  without it has no Services.
- In the lab, `conntrack.maxPerCore: 0`: the lab's nodes are network namespaces of one
  machine, whose conntrack sysctls are host-wide; kube-proxy leaves them alone.
- The pod template carries a digest of its ConfigMap, so a changed configuration rolls out
  one node at a time (kube-proxy would otherwise restart itself on a changed config file
  everywhere at once, and ignore a changed kubeconfig).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from bootstrap.addons.context import AddonContext

ADDON = "kube-proxy"
NAMESPACE = "kube-system"
MANAGED_BY = "multizone-k8s"
ZONE_LABEL = "topology.kubernetes.io/zone"
POD_ZONE_LABEL = "mzk.io/zone"
CONFIG_DIR = "/var/lib/kube-proxy"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
HEALTHZ_PORT = 10256
METRICS_ADDRESS = "127.0.0.1:10249"
NODE_PROXIER_ROLE = "system:node-proxier"
BINDING = "multizone-k8s:kube-proxy"
CONFIG_DIGEST = "mzk.io/config-sha256"


def labels() -> dict[str, str]:
    """What every object of this add-on carries: the apply step prunes by these."""
    return {"app.kubernetes.io/managed-by": MANAGED_BY, "mzk.io/addon": ADDON}


def _meta(name: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels()}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def kubeconfig(server: str) -> dict[str, Any]:
    """kube-proxy's kubeconfig: the zone's endpoint, verified with the cluster CA and
    authenticated with the pod's projected service-account token."""
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "default", "cluster": {
            "server": server, "certificate-authority": f"{SA_DIR}/ca.crt"}}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
        "current-context": "default",
        "users": [{"name": "default", "user": {"tokenFile": f"{SA_DIR}/token"}}],
    }


def proxy_config(ctx: AddonContext) -> dict[str, Any]:
    """The KubeProxyConfiguration (the same in every zone)."""
    config: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clusterCIDR": ctx.pod_cidr,
        "healthzBindAddress": f"0.0.0.0:{HEALTHZ_PORT}",
        "metricsBindAddress": METRICS_ADDRESS,
        "clientConnection": {"kubeconfig": f"{CONFIG_DIR}/kubeconfig.conf"},
    }
    if ctx.lab:  # one machine's conntrack table, shared by every lab node: leave it alone
        config["conntrack"] = {"maxPerCore": 0}
    return config


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False)


def _config_map(ctx: AddonContext, zone: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{ADDON}-{zone}"),
            "data": {"config.conf": _dump(proxy_config(ctx)),
                     "kubeconfig.conf": _dump(kubeconfig(ctx.zone_endpoints[zone]))}}


def _digest(config_map: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config_map["data"], sort_keys=True).encode()).hexdigest()


def _container(ctx: AddonContext) -> dict[str, Any]:
    return {
        "name": ADDON,
        "image": ctx.image(ADDON),
        "imagePullPolicy": "Never" if ctx.lab else "IfNotPresent",
        "command": ["/usr/local/bin/kube-proxy", f"--config={CONFIG_DIR}/config.conf",
                    "--hostname-override=$(NODE_NAME)"],
        "env": [{"name": "NODE_NAME", "valueFrom": {
            "fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}}],
        "securityContext": {"privileged": True},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                      "limits": {"memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": HEALTHZ_PORT},
                           "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "volumeMounts": [
            {"name": "kube-proxy", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True}],
    }


def _daemon_set(ctx: AddonContext, zone: str, config_map: dict[str, Any]) -> dict[str, Any]:
    name = f"{ADDON}-{zone}"
    pod_labels = {"k8s-app": ADDON, POD_ZONE_LABEL: zone}
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(name),
        "spec": {
            "selector": {"matchLabels": dict(pod_labels)},
            "updateStrategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {CONFIG_DIGEST: _digest(config_map)}},
                "spec": {
                    "serviceAccountName": ADDON,
                    "hostNetwork": True,
                    "dnsPolicy": "Default",
                    "priorityClassName": "system-node-critical",
                    "nodeSelector": {ZONE_LABEL: zone},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [_container(ctx)],
                    "volumes": [
                        {"name": "kube-proxy", "configMap": {"name": name}},
                        {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}}],
                },
            },
        },
    }


def manifests(ctx: AddonContext) -> list[dict[str, Any]]:
    """The ServiceAccount, its binding to `system:node-proxier`, then per zone (sorted) its
    ConfigMap and DaemonSet."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(ADDON)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta(BINDING, namespaced=False),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": NODE_PROXIER_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": ADDON, "namespace": NAMESPACE}]},
    ]
    for zone in sorted(set(ctx.zones)):
        config_map = _config_map(ctx, zone)
        objects += [config_map, _daemon_set(ctx, zone, config_map)]
    return objects
