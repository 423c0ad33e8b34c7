"""The EBS CSI driver add-on's manifests and the pinned images of every real-host add-on.

Every object is validated offline against the newest Kubernetes schema kubernetes_validate
ships, strictly (an unknown field fails), and read as policy: labels, pins, privileges."""

from __future__ import annotations

import copy
import re

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from bootstrap import k8s_releases
from bootstrap.addons import ebs_csi, images
from bootstrap.addons.context import AddonContext
from bootstrap.steps import addons as addons_step

CLUSTER = "mz-prod"
ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
SCHEMA = latest_version()
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def context(version: str = "1.36.0") -> AddonContext:
    names = (images.KUBE_PROXY, images.COREDNS, *ebs_csi.IMAGES)
    return AddonContext(
        cluster_name=CLUSTER, kubernetes_version=version, zones=ZONES,
        zone_endpoints={z: f"https://api-{z[-1]}.{CLUSTER}.internal:6443" for z in ZONES},
        regional_endpoint="https://lb.example:6443", service_cidr="10.96.0.0/12",
        pod_cidr="10.244.0.0/16", dns_address="10.96.0.10", dns_domain="cluster.local",
        node_count=6, lab=False, images={n: images.image_for(n, version) for n in names})


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return ebs_csi.manifests(context())


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    (found,) = by_kind(objects, kind)
    return found


def containers(obj: dict) -> dict[str, dict]:
    return {c["name"]: c for c in obj["spec"]["template"]["spec"]["containers"]}


# ------------------------------------------------------------------------------ images


def every_pin() -> list[images.PinnedImage]:
    return [*images.KUBE_PROXY_IMAGES.values(), *images.IMAGES.values()]


def test_every_reference_is_registry_path_tag_and_sha256_digest() -> None:
    pattern = re.compile(r"^[a-z0-9.-]+(/[a-z0-9._-]+)+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$")
    for pin in every_pin():
        assert pattern.match(pin.reference), pin.reference
        assert images.REFERENCE.match(pin.reference)
        assert pin.reference.startswith("registry.k8s.io/")
        assert "k8s.io" in pin.source and re.search(r"@ [0-9a-f]{40}$", pin.source)
    assert not images.REFERENCE.match("registry.k8s.io/kube-proxy:v1.36.0")  # a tag alone
    assert not images.REFERENCE.match("registry.k8s.io/kube-proxy@sha256:" + "0" * 64)


def test_no_two_images_share_a_digest() -> None:
    digests = [pin.digest for pin in every_pin()]
    assert len(set(digests)) == len(digests)


def test_kube_proxy_is_pinned_for_every_release_the_project_installs() -> None:
    for version in k8s_releases.supported_versions():
        assert images.image_for("kube-proxy", version).startswith(
            f"registry.k8s.io/kube-proxy:v{version}@sha256:")


def test_an_unpinned_kube_proxy_is_one_line_naming_the_fix() -> None:
    with pytest.raises(ValueError) as err:
        images.image_for("kube-proxy", "1.33.0")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("no pinned digest for kube-proxy v1.33.0: add it to "
                              "bootstrap/addons/images.py from ")
    with pytest.raises(ValueError, match="no pinned image named 'flannel'"):
        images.image_for("flannel", "1.36.0")


def test_the_apply_step_finds_every_image_it_checks_before_touching_hosts() -> None:
    """bootstrap.steps.addons pins kube-proxy, CoreDNS and ebs_csi.IMAGES per release."""
    for version in k8s_releases.supported_versions():
        refs = {n: images.image_for(n, version)
                for n in (*addons_step.REAL_IMAGES, *ebs_csi.IMAGES)}
        assert all(DIGEST.search(r) for r in refs.values())


def test_coredns_and_the_csi_images_are_the_versions_chosen() -> None:
    tags = {name: pin.tag for name, pin in images.IMAGES.items()}
    assert tags == {"coredns": "v1.13.1", "aws-ebs-csi-driver": "v1.59.0",
                    "csi-provisioner": "v6.2.0", "csi-attacher": "v4.11.0",
                    "csi-resizer": "v2.1.0", "livenessprobe": "v2.18.0",
                    "csi-node-driver-registrar": "v2.16.0"}


# ------------------------------------------------------------------------------ manifests


def test_every_object_is_strictly_valid_for_the_newest_schema(objects: list[dict]) -> None:
    assert SCHEMA.startswith("1.3")
    for obj in objects:
        kubernetes_validate.validate(obj, SCHEMA, strict=True)


def test_strict_validation_would_catch_a_mistake(objects: list[dict]) -> None:
    broken = copy.deepcopy(one(objects, "DaemonSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["mountPropagation"] = "Bidirectional"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA, strict=True)


def test_every_object_carries_our_labels_and_a_kind_the_apply_step_prunes(
        objects: list[dict]) -> None:
    keys = set()
    for obj in objects:
        assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "multizone-k8s",
                                             "mzk.io/addon": "ebs-csi"}
        assert obj["kind"] in addons_step._RESOURCE
        keys.add(addons_step.key(obj))
    assert len(keys) == len(objects)


def test_rendering_is_deterministic() -> None:
    assert ebs_csi.manifests(context()) == ebs_csi.manifests(context())


def test_the_csi_driver_object(objects: list[dict]) -> None:
    driver = one(objects, "CSIDriver")
    assert driver["metadata"]["name"] == "ebs.csi.aws.com"
    assert driver["spec"] == {"attachRequired": True, "podInfoOnMount": False,
                              "fsGroupPolicy": "File"}


def test_every_container_runs_a_pinned_image_if_not_present(objects: list[dict]) -> None:
    seen = set()
    for workload in (*by_kind(objects, "Deployment"), *by_kind(objects, "DaemonSet")):
        for container in containers(workload).values():
            assert DIGEST.search(container["image"]), container["image"]
            assert container["imagePullPolicy"] == "IfNotPresent"
            seen.add(container["image"])
    assert seen == {images.image_for(n, "1.36.0") for n in ebs_csi.IMAGES}


def test_the_controller_is_two_replicas_spread_across_zones(objects: list[dict]) -> None:
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    spec = deployment["spec"]["template"]["spec"]
    zone = [c for c in spec["topologySpreadConstraints"]
            if c["topologyKey"] == "topology.kubernetes.io/zone"]
    assert zone and zone[0]["maxSkew"] == 1 and zone[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert zone[0]["labelSelector"]["matchLabels"] == \
        deployment["spec"]["template"]["metadata"]["labels"]
    assert set(containers(deployment)) == {"ebs-plugin", "csi-provisioner", "csi-attacher",
                                           "csi-resizer", "liveness-probe"}
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_volumes_are_tagged_as_the_clusters(objects: list[dict]) -> None:
    args = containers(one(objects, "Deployment"))["ebs-plugin"]["args"]
    assert args[0] == "controller"
    assert f"--k8s-tag-cluster-id={CLUSTER}" in args  # kubernetes.io/cluster/<c>=owned
    assert f"--extra-tags=multizone/cluster={CLUSTER}" in args
    provisioner = containers(one(objects, "Deployment"))["csi-provisioner"]["args"]
    assert "--feature-gates=Topology=true" in provisioner  # zones from allowedTopologies


def test_the_node_plugin_mounts_the_kubelet_dir_bidirectionally(objects: list[dict]) -> None:
    daemon_set = one(objects, "DaemonSet")
    spec = daemon_set["spec"]["template"]["spec"]
    plugin = containers(daemon_set)["ebs-plugin"]
    assert plugin["args"][0] == "node"
    assert plugin["securityContext"]["privileged"] is True
    kubelet = [m for m in plugin["volumeMounts"] if m["mountPath"] == "/var/lib/kubelet"]
    assert kubelet == [{"name": "kubelet-dir", "mountPath": "/var/lib/kubelet",
                        "mountPropagation": "Bidirectional"}]
    registrar = containers(daemon_set)["node-driver-registrar"]
    assert ("--kubelet-registration-path=/var/lib/kubelet/plugins/ebs.csi.aws.com/csi.sock"
            in registrar["args"])
    assert "privileged" not in registrar["securityContext"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    assert volumes["registration-dir"] == "/var/lib/kubelet/plugins_registry/"
    assert spec["tolerations"] == [{"operator": "Exists"}]


def test_only_the_node_plugin_is_privileged_and_health_stays_on_loopback(
        objects: list[dict]) -> None:
    """Host network is needed (the metadata service's hop limit of 1), so nothing listens
    beyond loopback and every declared port is distinct across the two pods."""
    ports = []
    for workload in (one(objects, "Deployment"), one(objects, "DaemonSet")):
        spec = workload["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True
        for name, container in containers(workload).items():
            privileged = container["securityContext"].get("privileged", False)
            assert privileged == (workload["kind"] == "DaemonSet" and name == "ebs-plugin")
            for arg in container["args"]:
                if arg.startswith("--http-endpoint="):
                    assert arg.startswith("--http-endpoint=127.0.0.1:")
            probe = container.get("livenessProbe")
            if probe:
                assert probe["httpGet"]["host"] == "127.0.0.1"
            ports += [p["containerPort"] for p in container.get("ports", [])]
    assert len(ports) == len(set(ports)) == 3
    controller = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert controller["securityContext"]["runAsNonRoot"] is True


def rules_of(objects: list[dict], name: str) -> list[dict]:
    (role,) = [o for o in objects if o["kind"] in ("ClusterRole", "Role")
               and o["metadata"]["name"] == name]
    return role["rules"]


def test_rbac_is_least_privilege(objects: list[dict]) -> None:
    for role in (*by_kind(objects, "ClusterRole"), *by_kind(objects, "Role")):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert "secrets" not in rule["resources"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    node = rules_of(objects, "multizone-k8s:ebs-csi-node")
    assert {v for r in node for v in r["verbs"]} <= {"get", "list", "watch"}
    controller = rules_of(objects, "multizone-k8s:ebs-csi-controller")
    writes = {(r["resources"][0], v) for r in controller for v in r["verbs"]
              if v not in ("get", "list", "watch")}
    assert writes == {
        ("persistentvolumes", "create"), ("persistentvolumes", "patch"),
        ("persistentvolumes", "delete"), ("persistentvolumeclaims", "update"),
        ("persistentvolumeclaims/status", "patch"), ("events", "create"),
        ("events", "update"), ("events", "patch"), ("volumeattachments", "patch"),
        ("volumeattachments/status", "patch")}
    leases = one(objects, "Role")
    assert leases["metadata"]["namespace"] == "kube-system"
    assert leases["rules"][0]["resources"] == ["leases"]


def test_every_binding_names_a_rendered_role_and_service_account(objects: list[dict]) -> None:
    roles = {(o["kind"], o["metadata"]["name"]) for o in objects
             if o["kind"] in ("ClusterRole", "Role")}
    accounts = {o["metadata"]["name"] for o in by_kind(objects, "ServiceAccount")}
    bindings = [*by_kind(objects, "ClusterRoleBinding"), *by_kind(objects, "RoleBinding")]
    assert len(bindings) == 3
    for binding in bindings:
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
        (subject,) = binding["subjects"]
        assert subject["name"] in accounts and subject["namespace"] == "kube-system"
    for workload in (one(objects, "Deployment"), one(objects, "DaemonSet")):
        assert workload["spec"]["template"]["spec"]["serviceAccountName"] in accounts
