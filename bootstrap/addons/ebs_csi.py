"""The EBS CSI driver on AWS: the provisioner behind the storage classes
(bootstrap.storage_classes, `ebs.csi.aws.com`), rendered as plain manifests from an
AddonContext. Its images are pinned in bootstrap.addons.images (one coherent release).

Why it looks like this:
- Both halves run on the host network. Nodes' metadata service answers only one hop away
  (hop limit 1, components/node_pools.py), so that pods on the pod network can read neither
  the instance identity nor the role's credentials; the controller needs those credentials
  (the nodes' role holds the driver's tag-scoped EC2 permissions) and the node plugin needs
  the instance's ID and zone, so both must be on the host's side of that hop. Their health
  endpoints therefore listen on loopback only, on ports of their own (controller 9810, node
  9808 and 9809), declared so that the scheduler keeps two users of a port apart.
- The controller: 2 replicas spread across zones (losing a zone keeps one) and nodes, a
  disruption budget of one; the provisioner, attacher and resizer sidecars elect a leader.
  It tags every volume it creates `kubernetes.io/cluster/<cluster>=owned` and
  `ebs.csi.aws.com/cluster-name=<cluster>` (`--k8s-tag-cluster-id`), which the IAM policy
  requires, plus `multizone/cluster=<cluster>` like every resource of the stack.
- The node plugin: privileged (it formats and mounts block devices), /var/lib/kubelet with
  Bidirectional propagation (its mounts must reach the kubelet), the registrar announcing
  the driver's socket to the kubelet; it tolerates every taint (a node without it cannot
  mount the volumes of its pods).
- RBAC: one ClusterRole per half with exactly the verbs the sidecars and plugins use, and a
  Role for the leader-election Leases in kube-system. No snapshots (the snapshot sidecar,
  its CRDs and controller are not installed), so no snapshot rules.
- Zones: the node plugin reports `topology.kubernetes.io/zone`, the key of the zonal storage
  classes' `allowedTopologies`, so a claim on `ebs-gp3-<zone>` gets its volume in that zone
  and its pods are scheduled there (docs/workloads-aws.md).
"""

from __future__ import annotations

from typing import Any

from bootstrap.addons import images
from bootstrap.addons.context import AddonContext

ADDON = "ebs-csi"
NAMESPACE = "kube-system"
MANAGED_BY = "multizone-k8s"
DRIVER = "ebs.csi.aws.com"
CONTROLLER = "ebs-csi-controller"
NODE = "ebs-csi-node"
ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Every image the add-on runs (names in bootstrap.addons.images and AddonContext.images).
IMAGES = (images.EBS_CSI_DRIVER, images.CSI_PROVISIONER, images.CSI_ATTACHER,
          images.CSI_RESIZER, images.LIVENESS_PROBE, images.NODE_DRIVER_REGISTRAR)
CONTROLLER_HEALTH_PORT = 9810
NODE_HEALTH_PORT = 9808
REGISTRAR_HEALTH_PORT = 9809
KUBELET_DIR = "/var/lib/kubelet"
PLUGIN_DIR = f"{KUBELET_DIR}/plugins/{DRIVER}/"
SOCKET_DIR = "/var/lib/csi/sockets/pluginproxy/"
EXTRA_TAG = "multizone/cluster"
RBAC = "rbac.authorization.k8s.io"
CORE, STORAGE = "", "storage.k8s.io"
READ = ["get", "list", "watch"]
EVENTS = ["list", "watch", "create", "update", "patch"]

# (apiGroup, resource, verbs): the provisioner, attacher and resizer sidecars' needs.
CONTROLLER_RULES = (
    (CORE, "persistentvolumes", [*READ, "create", "patch", "delete"]),
    (CORE, "persistentvolumeclaims", [*READ, "update"]),
    (CORE, "persistentvolumeclaims/status", ["patch"]),
    (CORE, "pods", READ),
    (CORE, "nodes", READ),
    (CORE, "events", EVENTS),
    (STORAGE, "storageclasses", READ),
    (STORAGE, "csinodes", READ),
    (STORAGE, "volumeattachments", [*READ, "patch"]),
    (STORAGE, "volumeattachments/status", ["patch"]),
    (STORAGE, "volumeattributesclasses", READ),
)
# The node plugin reads its Node and CSINode, and its VolumeAttachments at shutdown (the
# pre-stop hook waits for them to go). Nodes join without the driver's startup taint, so it
# never patches a Node.
NODE_RULES = (
    (CORE, "nodes", ["get"]),
    (STORAGE, "csinodes", ["get"]),
    (STORAGE, "volumeattachments", READ),
)
LEASE_RULES = (("coordination.k8s.io", "leases",
                ["get", "list", "watch", "create", "update", "delete"]),)
HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"}}


def labels() -> dict[str, str]:
    """What every object of this add-on carries: the apply step prunes by these."""
    return {"app.kubernetes.io/managed-by": MANAGED_BY, "mzk.io/addon": ADDON}


def _meta(name: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels()}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def _rules(rules: tuple[tuple[str, str, list[str]], ...]) -> list[dict[str, Any]]:
    return [{"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
            for group, resource, verbs in rules]


def _rbac(kind: str, name: str, rules: tuple[tuple[str, str, list[str]], ...],
          account: str) -> list[dict[str, Any]]:
    """A (Cluster)Role named `name` and its binding to the ServiceAccount `account`."""
    namespaced = kind == "Role"
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    return [
        {"apiVersion": f"{RBAC}/v1", "kind": kind, "metadata": _meta(name, namespaced),
         "rules": _rules(rules)},
        {"apiVersion": f"{RBAC}/v1", "kind": f"{kind}Binding",
         "metadata": _meta(name, namespaced),
         "roleRef": {"apiGroup": RBAC, "kind": kind, "name": name}, "subjects": [subject]},
    ]


def _container(ctx: AddonContext, name: str, image: str, args: list[str],
               **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name, "image": ctx.image(image),
        "imagePullPolicy": "Never" if ctx.lab else "IfNotPresent",
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "40Mi"},
                      "limits": {"memory": "256Mi"}},
        "securityContext": dict(HARDENED),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    container.update(extra)
    return container


def _health(port: int, name: str) -> dict[str, Any]:
    """A port on loopback of the host network: declared for the scheduler, probed by the
    kubelet on 127.0.0.1."""
    return {"ports": [{"name": name, "containerPort": port, "protocol": "TCP"}],
            "livenessProbe": {"httpGet": {"host": "127.0.0.1", "path": "/healthz",
                                          "port": port},
                              "initialDelaySeconds": 10, "timeoutSeconds": 3,
                              "periodSeconds": 10, "failureThreshold": 5}}


def _socket(mount: str, volume: str = "socket-dir") -> list[dict[str, Any]]:
    return [{"name": volume, "mountPath": mount}]


def _sidecar(ctx: AddonContext, name: str, image: str, args: list[str]) -> dict[str, Any]:
    return _container(ctx, name, image, ["--csi-address=$(ADDRESS)", "--v=2", *args],
                      env=[{"name": "ADDRESS", "value": f"{SOCKET_DIR}csi.sock"}],
                      volumeMounts=_socket(SOCKET_DIR))


def controller_args(ctx: AddonContext) -> list[str]:
    """The driver's controller: tags every volume as the cluster's (see module doc)."""
    return ["controller", "--endpoint=$(CSI_ENDPOINT)",
            f"--k8s-tag-cluster-id={ctx.cluster_name}",
            f"--extra-tags={EXTRA_TAG}={ctx.cluster_name}",
            "--batching=true", "--logging-format=text", "--v=2"]


def _controller_pod(ctx: AddonContext) -> dict[str, Any]:
    plugin = _container(
        ctx, "ebs-plugin", images.EBS_CSI_DRIVER, controller_args(ctx),
        env=[{"name": "CSI_ENDPOINT", "value": f"unix://{SOCKET_DIR}csi.sock"},
             {"name": "CSI_NODE_NAME", "valueFrom": {"fieldRef": {
                 "apiVersion": "v1", "fieldPath": "spec.nodeName"}}}],
        volumeMounts=_socket(SOCKET_DIR), **_health(CONTROLLER_HEALTH_PORT, "healthz"))
    sidecars = [
        _sidecar(ctx, "csi-provisioner", images.CSI_PROVISIONER, [
            "--timeout=60s", "--feature-gates=Topology=true", "--extra-create-metadata",
            "--leader-election=true", "--default-fstype=ext4"]),
        _sidecar(ctx, "csi-attacher", images.CSI_ATTACHER, [
            "--timeout=6m", "--leader-election=true"]),
        _sidecar(ctx, "csi-resizer", images.CSI_RESIZER, [
            "--timeout=60s", "--handle-volume-inuse-error=false", "--leader-election=true"]),
        _container(ctx, "liveness-probe", images.LIVENESS_PROBE, [
            "--csi-address=/csi/csi.sock", "--probe-timeout=60s",
            f"--http-endpoint=127.0.0.1:{CONTROLLER_HEALTH_PORT}"],
            volumeMounts=_socket("/csi")),
    ]
    spread = [{"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule",
               "nodeTaintsPolicy": "Honor",
               "labelSelector": {"matchLabels": {"app": CONTROLLER}}}
              for key in (ZONE_LABEL, HOSTNAME_LABEL)]
    return {
        "metadata": {"labels": {"app": CONTROLLER}},
        "spec": {
            "serviceAccountName": CONTROLLER,
            "hostNetwork": True,
            "priorityClassName": "system-cluster-critical",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
            "topologySpreadConstraints": spread,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                "runAsGroup": 1000, "fsGroup": 1000},
            "containers": [plugin, *sidecars],
            "volumes": [{"name": "socket-dir", "emptyDir": {}}],
        },
    }


def _node_pod(ctx: AddonContext) -> dict[str, Any]:
    plugin = _container(
        ctx, "ebs-plugin", images.EBS_CSI_DRIVER, [
            "node", "--endpoint=$(CSI_ENDPOINT)",
            f"--csi-mount-point-prefix={KUBELET_DIR}/plugins/kubernetes.io/csi/{DRIVER}/",
            "--logging-format=text", "--v=2"],
        env=[{"name": "CSI_ENDPOINT", "value": "unix:/csi/csi.sock"},
             {"name": "CSI_NODE_NAME", "valueFrom": {"fieldRef": {
                 "apiVersion": "v1", "fieldPath": "spec.nodeName"}}}],
        volumeMounts=[{"name": "kubelet-dir", "mountPath": KUBELET_DIR,
                       "mountPropagation": "Bidirectional"},
                      {"name": "plugin-dir", "mountPath": "/csi"},
                      {"name": "device-dir", "mountPath": "/dev"}],
        lifecycle={"preStop": {"exec": {"command": ["/bin/aws-ebs-csi-driver",
                                                     "pre-stop-hook"]}}})
    plugin["securityContext"] = {"privileged": True, "readOnlyRootFilesystem": True}
    registrar = _container(
        ctx, "node-driver-registrar", images.NODE_DRIVER_REGISTRAR, [
            "--csi-address=/csi/csi.sock",
            f"--kubelet-registration-path={PLUGIN_DIR}csi.sock",
            f"--http-endpoint=127.0.0.1:{REGISTRAR_HEALTH_PORT}", "--v=2"],
        volumeMounts=[{"name": "plugin-dir", "mountPath": "/csi"},
                      {"name": "registration-dir", "mountPath": "/registration"}],
        **_health(REGISTRAR_HEALTH_PORT, "healthz-reg"))
    liveness = _container(
        ctx, "liveness-probe", images.LIVENESS_PROBE, [
            "--csi-address=/csi/csi.sock",
            f"--http-endpoint=127.0.0.1:{NODE_HEALTH_PORT}"],
        volumeMounts=[{"name": "plugin-dir", "mountPath": "/csi"}])
    plugin.update(_health(NODE_HEALTH_PORT, "healthz"))

    def host(name: str, path: str, kind: str) -> dict[str, Any]:
        return {"name": name, "hostPath": {"path": path, "type": kind}}

    return {
        "metadata": {"labels": {"app": NODE}},
        "spec": {
            "serviceAccountName": NODE,
            "hostNetwork": True,
            "priorityClassName": "system-node-critical",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0},
            "containers": [plugin, registrar, liveness],
            "volumes": [host("kubelet-dir", KUBELET_DIR, "Directory"),
                        host("plugin-dir", PLUGIN_DIR, "DirectoryOrCreate"),
                        host("registration-dir", f"{KUBELET_DIR}/plugins_registry/",
                             "Directory"),
                        host("device-dir", "/dev", "Directory")],
        },
    }


def manifests(ctx: AddonContext) -> list[dict[str, Any]]:
    """The CSIDriver, the ServiceAccounts and RBAC, the controller (Deployment and its
    disruption budget) and the node plugin (DaemonSet), in apply order."""
    selector = {"matchLabels": {"app": CONTROLLER}}
    return [
        {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
         "metadata": _meta(DRIVER, namespaced=False),
         "spec": {"attachRequired": True, "podInfoOnMount": False, "fsGroupPolicy": "File"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(CONTROLLER)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NODE)},
        *_rbac("ClusterRole", f"{MANAGED_BY}:{CONTROLLER}", CONTROLLER_RULES, CONTROLLER),
        *_rbac("Role", f"{MANAGED_BY}:{CONTROLLER}-leases", LEASE_RULES, CONTROLLER),
        *_rbac("ClusterRole", f"{MANAGED_BY}:{NODE}", NODE_RULES, NODE),
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(CONTROLLER),
         "spec": {"replicas": 2, "selector": selector,
                  "strategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                  "template": _controller_pod(ctx)}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": _meta(CONTROLLER),
         "spec": {"maxUnavailable": 1, "selector": selector}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(NODE),
         "spec": {"selector": {"matchLabels": {"app": NODE}},
                  "updateStrategy": {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxUnavailable": "10%"}},
                  "template": _node_pod(ctx)}},
    ]
