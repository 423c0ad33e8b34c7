"""CoreDNS: the cluster's DNS (`kubernetes.default.svc`, seed 003's in-pod path to the API),
rendered as plain manifests from an AddonContext.

Why it looks like this:
- It listens on 1053 inside the pod and the `kube-dns` Service maps 53 to it, so it needs
  no capability and runs as a non-root user (65532) with a read-only root, no privilege
  escalation and the runtime's seccomp profile.
- Replicas and resources come from bootstrap.addons.dns_scale, the rule the autoscaler on
  the control plane applies as nodes come and go: the renderer and the autoscaler agree.
- Spread over zones (maxSkew 1, DoNotSchedule) so that losing a zone keeps DNS; nodes whose
  taints the pods do not tolerate (a lost zone's unreachable nodes) do not count as a domain
  (`nodeTaintsPolicy: Honor`), or the replacements of a lost zone's replicas would wait for
  it. Spread over nodes as far as possible (ScheduleAnyway).
- `dnsPolicy: Default`: CoreDNS forwards to its node's resolver, never to itself.
- The `reload` plugin picks up a changed Corefile, so no rollout is needed for one.
- In the lab there is no upstream resolver: no `forward`, hence no `loop` (it needs a next
  plugin to probe through and logs "no next plugin found" without one), no `fallthrough`
  (nothing follows `kubernetes`: a reverse lookup outside the cluster would be SERVFAIL
  instead of NXDOMAIN), and the server block serves only the cluster's zones, so other
  names are REFUSED at once instead of failing slowly.
- No `prometheus` plugin: the lab's CoreDNS build has none, so neither a metrics port.
"""

from __future__ import annotations

from typing import Any

from bootstrap.addons.context import AddonContext
from bootstrap.addons.dns_scale import DnsRule

ADDON = "coredns"
NAMESPACE = "kube-system"
MANAGED_BY = "multizone-k8s"
NAME = "coredns"
SERVICE = "kube-dns"
ROLE = "system:coredns"
POD_LABELS = {"k8s-app": "kube-dns"}
DNS_PORT = 1053
HEALTH_PORT = 8080
READY_PORT = 8181
CONFIG_DIR = "/etc/coredns"
USER = 65532
DEFAULT_RULE = DnsRule()  # until the inventory's cluster.dns reaches the AddonContext


def labels() -> dict[str, str]:
    """What every object of this add-on carries: the apply step prunes by these."""
    return {"app.kubernetes.io/managed-by": MANAGED_BY, "mzk.io/addon": ADDON}


def _meta(name: str, namespaced: bool = True,
          extra: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**labels(), **(extra or {})}}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def corefile(ctx: AddonContext) -> str:
    """The Corefile: the cluster's zones from the `kubernetes` plugin; on real hosts every
    other name forwarded to the node's resolver, in the lab refused."""
    domain = ctx.dns_domain
    reverse = "in-addr.arpa ip6.arpa"
    if ctx.lab:
        server = f"{domain}:{DNS_PORT} in-addr.arpa:{DNS_PORT} ip6.arpa:{DNS_PORT}"
        kubernetes = ["    pods insecure", "    ttl 30"]
        upstream: list[str] = []
    else:
        server = f".:{DNS_PORT}"
        kubernetes = ["    pods insecure", f"    fallthrough {reverse}", "    ttl 30"]
        upstream = ["forward . /etc/resolv.conf {", "    max_concurrent 1000", "}"]
    body = [
        "errors",
        f"health :{HEALTH_PORT} {{", "    lameduck 5s", "}",
        f"ready :{READY_PORT}",
        f"kubernetes {domain} {reverse} {{", *kubernetes, "}",
        *upstream,
        "cache 30",
        *([] if ctx.lab else ["loop"]),
        "reload",
        "loadbalance",
    ]
    return "".join([f"{server} {{\n", *(f"    {line}\n" for line in body), "}\n"])


def _rbac() -> list[dict[str, Any]]:
    group = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": f"{group}/v1", "kind": "ClusterRole", "metadata": _meta(ROLE, False),
         "rules": [
             {"apiGroups": [""], "resources": ["endpoints", "namespaces", "pods", "services"],
              "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
              "verbs": ["list", "watch"]}]},
        {"apiVersion": f"{group}/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta(ROLE, False),
         "roleRef": {"apiGroup": group, "kind": "ClusterRole", "name": ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
    ]


def _container(ctx: AddonContext, rule: DnsRule) -> dict[str, Any]:
    return {
        "name": NAME,
        "image": ctx.image(ADDON),
        "imagePullPolicy": "Never" if ctx.lab else "IfNotPresent",
        "args": ["-conf", f"{CONFIG_DIR}/Corefile"],
        "ports": [{"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": DNS_PORT, "protocol": "TCP"},
                  {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
                  {"name": "ready", "containerPort": READY_PORT, "protocol": "TCP"}],
        "resources": rule.resources(ctx.node_count),
        "livenessProbe": {"httpGet": {"path": "/health", "port": HEALTH_PORT},
                          "initialDelaySeconds": 60, "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 5},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": READY_PORT},
                           "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }


def _spread(key: str, when_unsatisfiable: str) -> dict[str, Any]:
    constraint: dict[str, Any] = {
        "maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when_unsatisfiable,
        "labelSelector": {"matchLabels": dict(POD_LABELS)},
        "matchLabelKeys": ["pod-template-hash"]}  # each revision spread on its own
    if when_unsatisfiable == "DoNotSchedule":
        constraint["nodeTaintsPolicy"] = "Honor"
    return constraint


def _deployment(ctx: AddonContext, rule: DnsRule) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(NAME, extra=POD_LABELS),
        "spec": {
            "replicas": rule.replicas(ctx.node_count, len(ctx.zones)),
            "selector": {"matchLabels": dict(POD_LABELS)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}},
            "template": {
                "metadata": {"labels": dict(POD_LABELS)},
                "spec": {
                    "serviceAccountName": NAME,
                    "priorityClassName": "system-cluster-critical",
                    "dnsPolicy": "Default",
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                    "topologySpreadConstraints": [
                        _spread("topology.kubernetes.io/zone", "DoNotSchedule"),
                        _spread("kubernetes.io/hostname", "ScheduleAnyway")],
                    "securityContext": {"runAsNonRoot": True, "runAsUser": USER,
                                        "runAsGroup": USER,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [_container(ctx, rule)],
                    "volumes": [{"name": "config", "configMap": {
                        "name": NAME, "items": [{"key": "Corefile", "path": "Corefile"}]}}],
                },
            },
        },
    }


def _service(ctx: AddonContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        # cluster-service and name: `kubectl cluster-info` lists it as CoreDNS.
        "metadata": _meta(SERVICE, extra={**POD_LABELS, "kubernetes.io/cluster-service": "true",
                                          "kubernetes.io/name": "CoreDNS"}),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ctx.dns_address,
            "selector": dict(POD_LABELS),
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": DNS_PORT},
                      {"name": "dns-tcp", "port": 53, "protocol": "TCP",
                       "targetPort": DNS_PORT}],
        },
    }


def manifests(ctx: AddonContext, rule: DnsRule | None = None) -> list[dict[str, Any]]:
    """ServiceAccount, RBAC, Corefile, Deployment, PodDisruptionBudget, Service."""
    rule = rule or DEFAULT_RULE
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME)},
        *_rbac(),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(NAME),
         "data": {"Corefile": corefile(ctx)}},
        _deployment(ctx, rule),
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(NAME),
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(POD_LABELS)}}},
        _service(ctx),
    ]
