"""Storage classes: one per zone pinned by `allowedTopologies`, a late-binding default,
all valid against the Kubernetes schema of the cluster's release."""

from __future__ import annotations

import kubernetes_validate

from tests.program.mocks import Evaluation


def test_manifests_are_valid_kubernetes(prod: Evaluation) -> None:
    manifests = prod.outputs["storageClasses"]
    assert len(manifests) == 4
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.31", strict=True)


def test_schema_validation_would_catch_a_mistake(prod: Evaluation) -> None:
    broken = {**prod.outputs["storageClasses"][1], "allowedTopology": []}
    try:
        kubernetes_validate.validate(broken, "1.31", strict=True)
    except kubernetes_validate.ValidationError:
        return
    raise AssertionError("an unknown field passed strict validation")


def test_one_class_per_zone_pins_its_volumes_there(prod: Evaluation) -> None:
    zonal = [m for m in prod.outputs["storageClasses"] if "allowedTopologies" in m]
    pinned = {}
    for manifest in zonal:
        (term,) = manifest["allowedTopologies"]
        (expr,) = term["matchLabelExpressions"]
        assert expr["key"] == "topology.kubernetes.io/zone"
        (zone,) = expr["values"]
        pinned[manifest["metadata"]["name"]] = zone
        assert manifest["parameters"]["encrypted"] == "true"
    assert pinned == {f"ebs-gp3-{z}": z for z in ("eu-west-1a", "eu-west-1b", "eu-west-1c")}


def test_exactly_one_default_class_binding_late(prod: Evaluation) -> None:
    defaults = [m for m in prod.outputs["storageClasses"] if m["metadata"].get(
        "annotations", {}).get("storageclass.kubernetes.io/is-default-class") == "true"]
    assert len(defaults) == 1
    assert defaults[0]["volumeBindingMode"] == "WaitForFirstConsumer"
    assert "allowedTopologies" not in defaults[0]
