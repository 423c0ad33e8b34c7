"""The CoreDNS add-on offline: its manifests (strictly valid for the newest release
kubernetes-validate knows), the Corefile on real hosts and in the lab, the kube-dns Service,
the scaling rule it shares with the control plane's autoscaler, and the autoscaler's one
look against a small fake API (the lead's lab test runs it against a real one), also as it
is shipped: beside its rule, without site-packages."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from bootstrap.addons import coredns, dns_scale
from bootstrap.addons.context import AddonContext
from bootstrap.addons.dns_scale import DnsRule
from bootstrap.node import dns_autoscaler

VERSION = kubernetes_validate.latest_version()
ZONES = ("zone-a", "zone-b", "zone-c")


def context(lab: bool = True, **changes: Any) -> AddonContext:
    ctx = AddonContext(
        cluster_name="lab", kubernetes_version="1.36.2", zones=ZONES,
        zone_endpoints={z: f"https://api-{z}.lab.internal:6443" for z in ZONES},
        regional_endpoint="https://api.lab.internal:6443", service_cidr="10.96.0.0/12",
        pod_cidr="10.244.0.0/16", dns_address="10.96.0.10", dns_domain="cluster.local",
        node_count=7, lab=lab,
        images={"kube-proxy": "mzk.local/kube-proxy:lab",
                "coredns": "mzk.local/coredns:lab" if lab else
                "registry.k8s.io/coredns/coredns@sha256:" + "b" * 64})
    return dataclasses.replace(ctx, **changes)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


# ---- the manifests ---------------------------------------------------------------------------

@pytest.mark.parametrize("lab", [True, False])
def test_every_object_is_valid_and_labelled_for_pruning(lab: bool) -> None:
    objects = coredns.manifests(context(lab))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ServiceAccount", "coredns"), ("ClusterRole", "system:coredns"),
        ("ClusterRoleBinding", "system:coredns"), ("ConfigMap", "coredns"),
        ("Deployment", "coredns"), ("PodDisruptionBudget", "coredns"), ("Service", "kube-dns")]
    for obj in objects:
        assert kubernetes_validate.validate(obj, VERSION, strict=True)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "multizone-k8s"
        assert labels["mzk.io/addon"] == "coredns"
        if obj["kind"].startswith("Cluster"):
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == "kube-system"


def test_strict_validation_would_catch_a_misplaced_field() -> None:
    service = one(coredns.manifests(context()), "Service")
    service["spec"]["ports"][0]["targetport"] = 1053
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, VERSION, strict=True)


def test_rbac_reads_only_what_the_kubernetes_plugin_watches() -> None:
    objects = coredns.manifests(context())
    role, binding = one(objects, "ClusterRole"), one(objects, "ClusterRoleBinding")
    grants = {(group, resource, tuple(rule["verbs"])) for rule in role["rules"]
              for group in rule["apiGroups"] for resource in rule["resources"]}
    assert grants == {("", r, ("list", "watch"))
                      for r in ("endpoints", "services", "pods", "namespaces")} | {
        ("discovery.k8s.io", "endpointslices", ("list", "watch"))}
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == "system:coredns"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "coredns",
                                    "namespace": "kube-system"}]


REAL_COREFILE = """\
.:1053 {
    errors
    health :8080 {
        lameduck 5s
    }
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    forward . /etc/resolv.conf {
        max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
"""

LAB_COREFILE = """\
example.test:1053 in-addr.arpa:1053 ip6.arpa:1053 {
    errors
    health :8080 {
        lameduck 5s
    }
    ready :8181
    kubernetes example.test in-addr.arpa ip6.arpa {
        pods insecure
        ttl 30
    }
    cache 30
    reload
    loadbalance
}
"""


def test_corefile_on_real_hosts_forwards_everything_else_to_the_nodes_resolver() -> None:
    assert coredns.corefile(context(lab=False)) == REAL_COREFILE
    config_map = one(coredns.manifests(context(lab=False)), "ConfigMap")
    assert config_map["data"] == {"Corefile": REAL_COREFILE}


def test_corefile_in_the_lab_serves_only_the_cluster_and_refuses_the_rest() -> None:
    corefile = coredns.corefile(context(lab=True, dns_domain="example.test"))
    assert corefile == LAB_COREFILE
    for absent in ("forward", "loop", "fallthrough", "prometheus"):
        assert absent not in corefile


def test_the_deployment_runs_unprivileged_on_1053_spread_over_zones() -> None:
    ctx = context(lab=True)
    deployment = one(coredns.manifests(ctx), "Deployment")
    spec = deployment["spec"]
    assert deployment["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert spec["selector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}}
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == {"k8s-app": "kube-dns"}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["dnsPolicy"] == "Default"
    assert pod["tolerations"] == [{"key": "CriticalAddonsOnly", "operator": "Exists"}]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532,
                                      "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    zone, host = pod["topologySpreadConstraints"]
    assert (zone["topologyKey"], zone["maxSkew"], zone["whenUnsatisfiable"]) == (
        "topology.kubernetes.io/zone", 1, "DoNotSchedule")
    assert zone["nodeTaintsPolicy"] == "Honor"  # a lost zone's tainted nodes do not count
    assert (host["topologyKey"], host["maxSkew"], host["whenUnsatisfiable"]) == (
        "kubernetes.io/hostname", 1, "ScheduleAnyway")
    for constraint in (zone, host):
        assert constraint["labelSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    [container] = pod["containers"]
    assert container["image"] == "mzk.local/coredns:lab"
    assert container["imagePullPolicy"] == "Never"
    assert container["args"] == ["-conf", "/etc/coredns/Corefile"]
    assert "command" not in container  # the image's own entry point, lab's or upstream's
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True}
    assert {(p["containerPort"], p["protocol"]) for p in container["ports"]} >= {
        (1053, "UDP"), (1053, "TCP")}
    assert all(p["containerPort"] > 1024 for p in container["ports"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8181}
    assert container["volumeMounts"] == [{"name": "config", "mountPath": "/etc/coredns",
                                          "readOnly": True}]
    assert pod["volumes"][0]["configMap"]["name"] == "coredns"
    real = one(coredns.manifests(context(lab=False)), "Deployment")
    assert real["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == \
        "IfNotPresent"


def test_replicas_and_resources_come_from_the_rule() -> None:
    deployment = one(coredns.manifests(context(node_count=7)), "Deployment")
    assert deployment["spec"]["replicas"] == 3  # one per zone
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "70Mi"},
                                      "limits": {"memory": "170Mi"}}
    big = one(coredns.manifests(context(node_count=700), DnsRule(nodes_per_replica=50)),
              "Deployment")
    assert big["spec"]["replicas"] == 14
    assert big["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "memory": "600Mi"}


def test_disruption_budget_and_service() -> None:
    objects = coredns.manifests(context(dns_address="10.100.0.10"))
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1,
                              "selector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    service = one(objects, "Service")
    labels = service["metadata"]["labels"]
    assert {k: labels[k] for k in ("k8s-app", "kubernetes.io/cluster-service",
                                   "kubernetes.io/name")} == {
        "k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
        "kubernetes.io/name": "CoreDNS"}
    assert service["metadata"]["name"] == "kube-dns"
    assert service["spec"]["clusterIP"] == "10.100.0.10"
    assert service["spec"]["selector"] == {"k8s-app": "kube-dns"}
    assert sorted((p["name"], p["port"], p["protocol"], p["targetPort"])
                  for p in service["spec"]["ports"]) == [
        ("dns", 53, "UDP", 1053), ("dns-tcp", 53, "TCP", 1053)]


def test_rendering_is_deterministic() -> None:
    first = coredns.manifests(context())
    assert json.dumps(first) == json.dumps(coredns.manifests(context()))
    assert coredns.manifests(context(), DnsRule()) == first
    first[4]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "x"
    assert coredns.manifests(context()) != first  # nothing shared between renderings


# ---- the rule --------------------------------------------------------------------------------

def test_replicas_one_per_zone_at_least() -> None:
    rule = DnsRule()
    assert [rule.replicas(n, 3) for n in (0, 1, 16, 48)] == [3, 3, 3, 3]
    assert rule.replicas(5, 5) == 5
    assert rule.replicas(0, 0) == 1


def test_replicas_grow_with_the_nodes_and_stop_at_the_cap() -> None:
    rule = DnsRule(nodes_per_replica=16, max_replicas=100)
    assert [rule.replicas(n, 3) for n in (49, 64, 65, 160)] == [4, 4, 5, 10]
    assert rule.replicas(5000, 3) == 100
    assert DnsRule(max_replicas=10).replicas(5000, 3) == 10
    assert DnsRule(nodes_per_replica=1).replicas(40, 3) == 40


def test_memory_limit_ladder_and_no_cpu_limit() -> None:
    rule = DnsRule()
    ladder = {n: rule.resources(n)["limits"] for n in (0, 100, 101, 500, 501, 2000, 2001, 5000)}
    assert ladder == {0: {"memory": "170Mi"}, 100: {"memory": "170Mi"},
                      101: {"memory": "300Mi"}, 500: {"memory": "300Mi"},
                      501: {"memory": "600Mi"}, 2000: {"memory": "600Mi"},
                      2001: {"memory": "1Gi"}, 5000: {"memory": "1Gi"}}
    assert rule.resources(3000)["requests"] == {"cpu": "100m", "memory": "70Mi"}
    rule.resources(10)["limits"]["memory"] = "changed"
    assert rule.resources(10)["limits"] == {"memory": "170Mi"}


def test_validate_names_the_inventory_field_and_the_fix() -> None:
    assert DnsRule().validate(3) == []
    assert DnsRule(nodes_per_replica=5000, max_replicas=1000).validate(3) == []
    assert DnsRule(nodes_per_replica=0).validate(3) == [
        "cluster.dns.nodes_per_replica: 0 is out of range; use 1..5000"]
    assert DnsRule(nodes_per_replica=5001).validate(3) == [
        "cluster.dns.nodes_per_replica: 5001 is out of range; use 1..5000"]
    [fewer] = DnsRule(max_replicas=2).validate(3)
    assert fewer.startswith("cluster.dns.max_replicas: 2 is fewer than the 3 zone(s)")
    assert fewer.endswith("; use 3..1000")
    assert DnsRule(max_replicas=1001).validate(3) == [
        "cluster.dns.max_replicas: 1001 is out of range; use 3..1000"]
    both = DnsRule(nodes_per_replica=True, max_replicas="9").validate(3)  # type: ignore[arg-type]
    assert [p.split(":")[0] for p in both] == ["cluster.dns.nodes_per_replica",
                                               "cluster.dns.max_replicas"]
    assert all("expected a whole number" in p and "; use " in p and "\n" not in p
               for p in both)


def test_rule_and_autoscaler_use_the_standard_library_only() -> None:
    """Both are shipped to hosts that have only python3: no third-party import, and from
    the project only the rule, with a fallback to its shipped name."""
    for module in (dns_scale, dns_autoscaler):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or name in (
                    "__future__", "bootstrap.addons.dns_scale", "dns_scale"), name


# ---- the autoscaler --------------------------------------------------------------------------

class FakeApi:
    """Nodes and the coredns Deployment as the API server would hold them; a strategic
    merge PATCH of replicas and one container's resources is applied (null deletes)."""

    def __init__(self, nodes: int, deployment: dict[str, Any] | None,
                 deleting: int = 0) -> None:
        self.nodes = [{"metadata": {"name": f"node-{i}"}} for i in range(nodes)]
        self.nodes += [{"metadata": {"name": f"gone-{i}",
                                     "deletionTimestamp": "2026-12-06T00:00:00Z"}}
                       for i in range(deleting)]
        self.deployment = deployment
        self.calls: list[tuple[str, str, Any, str]] = []
        self.fail: dict[str, int] = {}  # method -> HTTP status to answer

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        self.calls.append((method, path, copy.deepcopy(body), content_type))
        if method in self.fail:
            return self.fail[method], {"kind": "Status"}
        if path.startswith("/api/v1/nodes"):
            return 200, {"kind": "NodeList", "items": copy.deepcopy(self.nodes)}
        if self.deployment is None:
            return 404, {"kind": "Status", "code": 404}
        if method == "GET":
            return 200, copy.deepcopy(self.deployment)
        spec = self.deployment["spec"]
        if "replicas" in body["spec"]:
            spec["replicas"] = body["spec"]["replicas"]
        for patch in body["spec"].get("template", {}).get("spec", {}).get("containers", []):
            container = next(c for c in spec["template"]["spec"]["containers"]
                             if c["name"] == patch["name"])
            for section, values in patch["resources"].items():
                held = container.setdefault("resources", {}).setdefault(section, {})
                for key, value in values.items():
                    if value is None:
                        held.pop(key, None)
                    else:
                        held[key] = value
        return 200, copy.deepcopy(self.deployment)

    def patches(self) -> list[tuple[str, str, Any, str]]:
        return [c for c in self.calls if c[0] == "PATCH"]


def rendered(nodes: int, rule: DnsRule = DnsRule()) -> dict[str, Any]:  # noqa: B008
    """The Deployment as `apply` renders it for `nodes` nodes."""
    return one(coredns.manifests(context(node_count=nodes), rule), "Deployment")


def test_converged_means_no_patch() -> None:
    api = FakeApi(40, rendered(40))
    assert dns_autoscaler.scale_once(api, DnsRule(), 3) is None
    assert [c[0] for c in api.calls] == ["GET", "GET"]


def test_growth_sends_one_patch_setting_replicas_and_resources() -> None:
    api = FakeApi(120, rendered(40), deleting=30)
    change = dns_autoscaler.scale_once(api, DnsRule(), 3)
    assert change == ("deployment=kube-system/coredns nodes=120 zones=3 replicas=3->8 "
                      "limits.memory=170Mi->300Mi")
    [(_, path, body, content_type)] = api.patches()
    assert path == ("/apis/apps/v1/namespaces/kube-system/deployments/coredns"
                    "?fieldManager=multizone-k8s")
    assert content_type == "application/strategic-merge-patch+json"
    assert body == {"spec": {"replicas": 8, "template": {"spec": {"containers": [
        {"name": "coredns", "resources": {"requests": {"cpu": "100m", "memory": "70Mi"},
                                          "limits": {"memory": "300Mi"}}}]}}}}
    # What it leaves is what `apply` would render, and a second look changes nothing.
    assert api.deployment == rendered(120)
    assert dns_autoscaler.scale_once(api, DnsRule(), 3) is None
    assert len(api.patches()) == 1


def test_replicas_alone_do_not_touch_the_pod_template() -> None:
    """A resources change rolls every CoreDNS pod; a replicas change must not."""
    api = FakeApi(70, rendered(40))
    assert dns_autoscaler.scale_once(api, DnsRule(), 3) == (
        "deployment=kube-system/coredns nodes=70 zones=3 replicas=3->5")
    [(_, _, body, _)] = api.patches()
    assert body == {"spec": {"replicas": 5}}


def test_foreign_limits_are_removed_and_equal_quantities_are_equal() -> None:
    deployment = rendered(40)
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    resources["requests"]["cpu"] = "0.1"  # the same as 100m
    assert dns_autoscaler.scale_once(FakeApi(40, copy.deepcopy(deployment)), DnsRule(), 3) \
        is None
    resources["limits"]["cpu"] = "500m"  # a CPU limit throttles DNS: the rule has none
    api = FakeApi(40, deployment)
    assert dns_autoscaler.scale_once(api, DnsRule(), 3) == (
        "deployment=kube-system/coredns nodes=40 zones=3 limits.cpu=500m->none")
    [(_, _, body, _)] = api.patches()
    assert body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "memory": "170Mi", "cpu": None}
    assert api.deployment == rendered(40)  # the whole of the rule's resources, set again


def test_an_unset_replica_count_is_one() -> None:
    deployment = rendered(10)
    del deployment["spec"]["replicas"]
    api = FakeApi(10, deployment)
    assert "replicas=1->3" in (dns_autoscaler.scale_once(api, DnsRule(), 3) or "")


def test_no_deployment_yet_is_not_an_error() -> None:
    api = FakeApi(10, None)
    assert dns_autoscaler.scale_once(api, DnsRule(), 3) is None
    assert api.patches() == []


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_api_errors_raise_for_the_caller_to_back_off(method: str) -> None:
    api = FakeApi(200, rendered(10))
    api.fail[method] = 503
    with pytest.raises(RuntimeError, match="HTTP 503"):
        dns_autoscaler.scale_once(api, DnsRule(), 3)


def test_quantities_compare_by_value() -> None:
    q = dns_autoscaler.quantity
    assert q("1Gi") == q("1024Mi") == 2**30
    assert q("100m") == q("0.1") == q("1e-1")
    assert q("1E") == 10**18 and q("1E3") == 1000
    assert q("lots") is None
    assert not dns_autoscaler.same_quantity("170Mi", "300Mi")


def test_the_autoscaler_looks_at_most_once_a_period() -> None:
    api = FakeApi(70, rendered(40))
    scaler = dns_autoscaler.DnsAutoscaler(api, DnsRule(), 3, period=30.0)
    assert scaler.tick(100.0) == "deployment=kube-system/coredns nodes=70 zones=3 replicas=3->5"
    api.nodes = api.nodes[:10]
    assert scaler.tick(129.0) is None and len(api.calls) == 3  # not looked again yet
    assert scaler.tick(130.0) == "deployment=kube-system/coredns nodes=10 zones=3 replicas=5->3"
    assert scaler.tick(160.0) is None and len(api.calls) == 8  # looked: converged
    api.fail["GET"] = 500
    with pytest.raises(RuntimeError):
        scaler.tick(190.0)
    del api.fail["GET"]
    assert scaler.tick(200.0) is None and len(api.calls) == 9  # a failed look waits too


def test_rbac_for_the_autoscaler() -> None:
    objects = dns_autoscaler.rbac_manifests("mzk:csr-approver")
    for obj in objects:
        assert kubernetes_validate.validate(obj, VERSION, strict=True)
    role = next(o for o in objects if o["kind"] == "Role")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["deployments"],
                              "resourceNames": ["coredns"], "verbs": ["get", "patch"]}]


def test_shipped_beside_its_rule_without_site_packages(tmp_path: Path) -> None:
    """On a host: dns_autoscaler.py and dns_scale.py side by side, imported by a bare
    python3 (no site-packages, no `bootstrap` package)."""
    shutil.copy(dns_autoscaler.__file__, tmp_path / "dns_autoscaler.py")
    for name in dns_autoscaler.COMPANIONS:
        shutil.copy(Path(dns_scale.__file__).with_name(f"{name}.py"), tmp_path / f"{name}.py")
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent("""\
        import json, sys
        import dns_autoscaler
        assert "bootstrap" not in sys.modules
        deployment = json.loads(sys.argv[1])
        calls = []
        class Api:
            def request(self, method, path, body=None, content_type="application/json"):
                calls.append([method, path, body])
                if path.startswith("/api/v1/nodes"):
                    return 200, {"items": [{"metadata": {}}] * 100}
                return 200, deployment
        rule = dns_autoscaler.DnsRule(nodes_per_replica=10)
        print(json.dumps([dns_autoscaler.scale_once(Api(), rule, 3), calls]))
        """))
    done = subprocess.run([sys.executable, "-S", "-E", "-s", str(driver),
                           json.dumps(rendered(5))], capture_output=True, text=True,
                          timeout=30, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    change, calls = json.loads(done.stdout)
    assert change == "deployment=kube-system/coredns nodes=100 zones=3 replicas=3->10"
    assert [c[0] for c in calls] == ["GET", "GET", "PATCH"]
