"""The add-on step's decisions (bootstrap.steps.addons) and the lab's add-on images
(bootstrap.addons.lab_images), without a cluster: what is applied, what is pruned, what a
converged cluster costs, and images that are real OCI archives built once."""

from __future__ import annotations

import copy
import json
import tarfile
from pathlib import Path

import pytest

from bootstrap import inventory as inventory_module
from bootstrap.addons import ebs_csi, lab_images
from bootstrap.errors import ConfigError
from bootstrap.k8s_bin import LocalBinaries
from bootstrap.steps import addons
from tests.unit.pki_support import example_data

LAB_IMAGES = {n: lab_images.LabImage(n, lab_images.reference(n), f"/x/{n}.tar", "sha256:0")
              for n in ("kube-proxy", "coredns", "busybox")}


def inventory(**cluster: object) -> inventory_module.Inventory:
    data = copy.deepcopy(example_data())
    data["cluster"].update(cluster)
    return inventory_module.parse(data)


def wanted(inv: inventory_module.Inventory, lab: bool = True, nodes: int = 3) -> list[dict]:
    ctx = addons.context(inv, LAB_IMAGES if lab else None, nodes)
    return addons.rendered(ctx, inv.cluster.dns)


def state_of(objects: list[dict]) -> dict[tuple[str, str, str], str]:
    """What the probe reads back from a cluster holding exactly these objects."""
    listing = json.dumps({"items": objects})
    found = addons.parse_probe({"addons": listing})
    assert found is not None
    return found


def test_a_fresh_cluster_gets_every_add_on_and_a_converged_one_nothing() -> None:
    inv = inventory()
    objects = wanted(inv)
    apply, prune, lines = addons.plan({}, objects)
    assert apply == objects and prune == []
    assert [line.split(":")[0] for line in lines] == [
        "add-on pod-network", "add-on kube-proxy", "add-on coredns", "add-on lab-volumes"]
    assert addons.plan(state_of(objects), wanted(inv)) == ([], [], [])


def test_every_object_carries_our_labels_and_the_digest_of_its_rendering() -> None:
    for obj in wanted(inventory()):
        labels = obj["metadata"]["labels"]
        assert labels[addons.MANAGED_BY] == "multizone-k8s" and labels[addons.ADDON_LABEL]
        assert len(obj["metadata"]["annotations"][addons.RENDERED]) == 16
        kind = obj["kind"]
        assert kind in addons._RESOURCE, kind  # pruning can name it
        assert any(r.startswith(addons._RESOURCE[kind].split(".")[0].rstrip("s"))
                   for r in addons.KINDS), kind  # and the probe reads it


def test_a_changed_setting_updates_only_what_it_renders() -> None:
    inv = inventory()
    have = state_of(wanted(inv))
    grown = inventory(dns={"nodes_per_replica": 1})
    apply, prune, lines = addons.plan(have, wanted(grown, nodes=5))
    assert [(o["kind"], o["metadata"]["name"]) for o in apply] == [("Deployment", "coredns")]
    assert prune == [] and lines == ["add-on coredns: update Deployment kube-system/coredns"]


def test_an_add_on_no_longer_rendered_is_pruned() -> None:
    have = state_of(wanted(inventory()))
    apply, prune, lines = addons.plan(have, wanted(inventory(cni="external")))
    assert apply == []
    assert prune == [("ClusterRole", "", "multizone-k8s:pod-network"),
                     ("ClusterRoleBinding", "", "multizone-k8s:pod-network")]
    assert lines == [f"remove {k} multizone-k8s:pod-network (no longer rendered)"
                     for k in ("ClusterRole", "ClusterRoleBinding")]


def test_real_hosts_get_pinned_images_and_the_ebs_driver_the_lab_its_volumes() -> None:
    inv = inventory(kubernetes_version="1.36.0")
    real = wanted(inv, lab=False)
    images = [c["image"] for o in real if o["kind"] in ("Deployment", "DaemonSet")
              for c in o["spec"]["template"]["spec"]["containers"]]
    assert images and all("@sha256:" in i for i in images)
    assert {o["metadata"]["labels"][addons.ADDON_LABEL] for o in real} >= {"ebs-csi"}
    assert not [o for o in real if o["kind"] == "PersistentVolume"]
    lab = wanted(inv)
    assert not [o for o in lab if o["metadata"]["labels"][addons.ADDON_LABEL] == "ebs-csi"]
    assert all(c["image"].startswith("mzk.local/") for o in lab
               if o["kind"] in ("Deployment", "DaemonSet")
               for c in o["spec"]["template"]["spec"]["containers"])
    assert set(ebs_csi.IMAGES) <= set(addons.pinned_images(inv))


def test_a_version_without_pinned_images_is_refused_before_any_host() -> None:
    inv = inventory(kubernetes_version="1.33.2")
    with pytest.raises(ConfigError, match=r"cluster\.kubernetes_version: .*kube-proxy"):
        addons.pinned_images(inv)


def test_a_probe_that_got_no_answer_is_no_state() -> None:
    assert addons.parse_probe({"addons": ""}) is None
    assert addons.parse_probe({"addons": "error: the server is not there"}) is None
    assert addons.parse_probe({}) is None


def test_lab_images_are_oci_archives_built_once(tmp_path: Path) -> None:
    for name in ("kube-proxy", "coredns"):
        (tmp_path / name).write_bytes(b"\x7fELF fake " + name.encode())
    binaries = LocalBinaries(dir=tmp_path, paths={n: str(tmp_path / n) for n in
                                                  ("kube-proxy", "coredns")},
                             versions={}, digests={"kube-proxy": "a" * 64, "coredns": "b" * 64})
    built = lab_images.ensure(binaries)
    assert set(built) == {"kube-proxy", "coredns", "busybox"}
    with tarfile.open(built["kube-proxy"].archive) as archive:
        index = json.loads(archive.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = index["manifests"][0]
        assert manifest["digest"] == built["kube-proxy"].digest
        assert manifest["annotations"]["org.opencontainers.image.ref.name"] == \
            built["kube-proxy"].ref
        assert built["kube-proxy"].ref.startswith("mzk.local/kube-proxy:lab-")
        layer_names = [m.name for m in archive.getmembers()]
        assert f"blobs/sha256/{built['kube-proxy'].blob}" in layer_names
    stamps = {n: Path(i.archive).stat().st_mtime_ns for n, i in built.items()}
    again = lab_images.ensure(binaries)
    assert again == built
    assert {n: Path(i.archive).stat().st_mtime_ns for n, i in again.items()} == stamps
    # A new binary: a new image, under a new name; the others stay.
    changed = LocalBinaries(dir=tmp_path, paths=binaries.paths, versions={},
                            digests={"kube-proxy": "c" * 64, "coredns": "b" * 64})
    rebuilt = lab_images.ensure(changed)
    assert rebuilt["kube-proxy"].archive != built["kube-proxy"].archive
    assert rebuilt["kube-proxy"].ref != built["kube-proxy"].ref  # its pods roll
    assert rebuilt["coredns"] == built["coredns"]
    assert built["busybox"].ref == "mzk.local/busybox:lab"
