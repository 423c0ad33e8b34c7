"""The kube-proxy add-on's manifests, offline: every object valid for the newest Kubernetes
release kubernetes-validate knows (strict: no unknown field), one ConfigMap and DaemonSet
per zone pointed at that zone's endpoint, the KubeProxyConfiguration's fields, the
least-privilege credential, determinism. The lead's lab test runs them for real."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bootstrap.addons import kube_proxy
from bootstrap.addons.context import AddonContext

VERSION = kubernetes_validate.latest_version()
ZONES = ("zone-b", "zone-a", "zone-c")  # inventory order, deliberately not sorted
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def context(lab: bool = True, **changes: Any) -> AddonContext:
    ctx = AddonContext(
        cluster_name="lab", kubernetes_version="1.36.2", zones=ZONES,
        zone_endpoints={z: f"https://api-{z}.lab.internal:6443" for z in ZONES},
        regional_endpoint="https://api.lab.internal:6443", service_cidr="10.96.0.0/12",
        pod_cidr="10.244.0.0/16", dns_address="10.96.0.10", dns_domain="cluster.local",
        node_count=7, lab=lab,
        images={"kube-proxy": "mzk.local/kube-proxy:lab" if lab else
                "registry.k8s.io/kube-proxy@sha256:" + "a" * 64,
                "coredns": "mzk.local/coredns:lab"})
    return dataclasses.replace(ctx, **changes)


def by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.mark.parametrize("lab", [True, False])
def test_every_object_is_valid_and_labelled_for_pruning(lab: bool) -> None:
    objects = kube_proxy.manifests(context(lab))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ServiceAccount", "kube-proxy"), ("ClusterRoleBinding", "multizone-k8s:kube-proxy"),
        ("ConfigMap", "kube-proxy-zone-a"), ("DaemonSet", "kube-proxy-zone-a"),
        ("ConfigMap", "kube-proxy-zone-b"), ("DaemonSet", "kube-proxy-zone-b"),
        ("ConfigMap", "kube-proxy-zone-c"), ("DaemonSet", "kube-proxy-zone-c")]
    for obj in objects:
        assert kubernetes_validate.validate(obj, VERSION, strict=True)
        assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "multizone-k8s",
                                             "mzk.io/addon": "kube-proxy"}
        if obj["kind"] == "ClusterRoleBinding":
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == "kube-system"


def test_strict_validation_would_catch_a_misplaced_field() -> None:
    """The check above is not vacuous: a field at the wrong level is refused."""
    daemon_set = by_name(kube_proxy.manifests(context()), "DaemonSet")["kube-proxy-zone-a"]
    daemon_set["spec"]["template"]["spec"]["containers"][0]["hostNetwork"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemon_set, VERSION, strict=True)


def test_the_credential_is_the_built_in_node_proxier_role_and_no_certificate() -> None:
    objects = kube_proxy.manifests(context())
    binding = by_name(objects, "ClusterRoleBinding")["multizone-k8s:kube-proxy"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "system:node-proxier"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kube-proxy",
                                    "namespace": "kube-system"}]
    assert not [o for o in objects if o["kind"] in ("Secret", "ClusterRole", "Role")]
    for daemon_set in by_name(objects, "DaemonSet").values():
        pod = daemon_set["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "kube-proxy"
        assert pod.get("automountServiceAccountToken", True) is True
    for config_map in by_name(objects, "ConfigMap").values():
        kubeconfig = yaml.safe_load(config_map["data"]["kubeconfig.conf"])
        assert kubeconfig["users"] == [{"name": "default",
                                        "user": {"tokenFile": f"{SA_DIR}/token"}}]


@pytest.mark.parametrize("zone", ZONES)
def test_each_zone_is_served_by_its_own_endpoint(zone: str) -> None:
    ctx = context()
    objects = kube_proxy.manifests(ctx)
    kubeconfig = yaml.safe_load(
        by_name(objects, "ConfigMap")[f"kube-proxy-{zone}"]["data"]["kubeconfig.conf"])
    assert kubeconfig["current-context"] == "default"
    context_entry = kubeconfig["contexts"][0]["context"]
    cluster = next(c["cluster"] for c in kubeconfig["clusters"]
                   if c["name"] == context_entry["cluster"])
    assert cluster == {"server": f"https://api-{zone}.lab.internal:6443",
                       "certificate-authority": f"{SA_DIR}/ca.crt"}
    daemon_set = by_name(objects, "DaemonSet")[f"kube-proxy-{zone}"]
    pod = daemon_set["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"topology.kubernetes.io/zone": zone}
    assert pod["metadata"]["labels"] == {"k8s-app": "kube-proxy", "mzk.io/zone": zone}
    assert daemon_set["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    assert pod["spec"]["volumes"][0] == {"name": "kube-proxy",
                                         "configMap": {"name": f"kube-proxy-{zone}"}}


def test_the_zones_daemon_sets_never_select_each_others_pods() -> None:
    daemon_sets = by_name(kube_proxy.manifests(context()), "DaemonSet").values()
    for one in daemon_sets:
        selector = one["spec"]["selector"]["matchLabels"]
        chosen = [other["metadata"]["name"] for other in daemon_sets
                  if selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()]
        assert chosen == [one["metadata"]["name"]]


@pytest.mark.parametrize("lab", [True, False])
def test_kube_proxy_configuration_fields(lab: bool) -> None:
    config_map = by_name(kube_proxy.manifests(context(lab)), "ConfigMap")["kube-proxy-zone-a"]
    assert sorted(config_map["data"]) == ["config.conf", "kubeconfig.conf"]
    config = yaml.safe_load(config_map["data"]["config.conf"])
    expected = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clusterCIDR": "10.244.0.0/16",
        "healthzBindAddress": "0.0.0.0:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clientConnection": {"kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf"},
    }
    if lab:  # the lab's conntrack sysctls are the whole machine's
        expected["conntrack"] = {"maxPerCore": 0}
    assert config == expected
    other = yaml.safe_load(
        by_name(kube_proxy.manifests(context(lab, pod_cidr="10.32.0.0/12")),
                "ConfigMap")["kube-proxy-zone-a"]["data"]["config.conf"])
    assert other["clusterCIDR"] == "10.32.0.0/12"


@pytest.mark.parametrize("lab", [True, False])
def test_the_daemon_set(lab: bool) -> None:
    ctx = context(lab)
    daemon_set = by_name(kube_proxy.manifests(ctx), "DaemonSet")["kube-proxy-zone-c"]
    assert daemon_set["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    pod = daemon_set["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "Default"  # cluster DNS needs kube-proxy, not the reverse
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["volumes"][1] == {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}}
    [container] = pod["containers"]
    assert container["image"] == ctx.image("kube-proxy")
    assert container["imagePullPolicy"] == ("Never" if lab else "IfNotPresent")
    assert container["command"] == ["/usr/local/bin/kube-proxy",
                                    "--config=/var/lib/kube-proxy/config.conf",
                                    "--hostname-override=$(NODE_NAME)"]
    assert "args" not in container
    assert container["env"] == [{"name": "NODE_NAME", "valueFrom": {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}}]
    assert container["securityContext"] == {"privileged": True}
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                      "limits": {"memory": "256Mi"}}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 10256}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["kube-proxy"]["mountPath"] == "/var/lib/kube-proxy"
    assert mounts["lib-modules"] == {"name": "lib-modules", "mountPath": "/lib/modules",
                                     "readOnly": True}
    assert {m["name"] for m in container["volumeMounts"]} == {v["name"] for v in pod["volumes"]}


def test_rendering_is_deterministic_and_ignores_the_zones_order() -> None:
    first = kube_proxy.manifests(context())
    assert json.dumps(first) == json.dumps(kube_proxy.manifests(context()))
    assert first == kube_proxy.manifests(context(zones=tuple(sorted(ZONES))))


def test_a_changed_configuration_rolls_only_its_zone() -> None:
    """The pod template carries its ConfigMap's digest, so a changed endpoint rolls that
    zone's DaemonSet (one node at a time) and no other."""
    before = by_name(kube_proxy.manifests(context()), "DaemonSet")
    endpoints = {**context().zone_endpoints, "zone-b": "https://moved.lab.internal:6443"}
    after_objects = kube_proxy.manifests(context(zone_endpoints=endpoints))
    after = by_name(after_objects, "DaemonSet")
    changed = sorted(n for n in before if before[n] != after[n])
    assert changed == ["kube-proxy-zone-b"]
    config_map = by_name(after_objects, "ConfigMap")["kube-proxy-zone-b"]
    digest = hashlib.sha256(json.dumps(config_map["data"], sort_keys=True).encode()).hexdigest()
    assert after["kube-proxy-zone-b"]["spec"]["template"]["metadata"]["annotations"] == {
        "mzk.io/config-sha256": digest}
