"""The control plane changes one zone per `pulumi up` (components/rollout_guard.py): the
guard's check refuses an update that would replace or restart control-plane hosts in more
than one zone, with one line saying how to proceed, and allows one zone, no change and a
first creation; every control-plane instance depends on it; per-zone overrides reach only
their zone; a replaced instance's etcd volume is detached before it is attached again."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components import rollout_guard
from components.review import evaluation as review_evaluation
from components.rollout_guard import TYPE, ControlPlaneRolloutProvider, refusal
from tests.program.mocks import Evaluation, evaluate_bootstrapped
from tests.program.stackconfig import stack_config, stack_values
from tests.program.test_bootstrap_resource import DependencyMonitor

INSTANCE = "aws:ec2/instance:Instance"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
OLD_AMI, NEW_AMI = "ami-0123456789abcdef0", "ami-0fedcba9876543210"


def hosts(**per_zone: dict[str, str]) -> dict[str, dict[str, str]]:
    """Two hosts a zone, as the program declares them; `per_zone` changes a zone's values."""
    found = {}
    for letter, subnet in (("a", "10.0.16.0/20"), ("b", "10.0.32.0/20"), ("c", "10.0.48.0/20")):
        zone = f"eu-west-1{letter}"
        for n in (1, 2):
            found[f"mz-prod-cp-{letter}{n}"] = {
                "zone": zone, "imageId": OLD_AMI, "instanceType": "m6i.large",
                "privateSubnet": subnet, **per_zone.get(letter, {})}
    return found


def check(old: dict[str, Any] | None, new: dict[str, Any]) -> Any:
    olds = {} if old is None else {"hosts": old}
    return ControlPlaneRolloutProvider().check(olds, {"hosts": new})


# ------------------------------------------------------------------ the guard's check


def test_a_change_in_two_zones_is_refused_with_one_line() -> None:
    result = check(hosts(), hosts(a={"imageId": NEW_AMI}, b={"instanceType": "m6i.xlarge"}))
    (failure,) = result.failures
    assert failure.property == "hosts"
    assert "\n" not in failure.reason
    assert failure.reason.startswith(
        "this update would replace or restart control-plane hosts in 2 zones at once "
        f"(eu-west-1a: mz-prod-cp-a1 imageId {OLD_AMI} -> {NEW_AMI}, mz-prod-cp-a2 imageId "
        f"{OLD_AMI} -> {NEW_AMI}; eu-west-1b: mz-prod-cp-b1 instanceType m6i.large -> "
        "m6i.xlarge, mz-prod-cp-b2 instanceType m6i.large -> m6i.xlarge), and etcd would "
        "lose its quorum; move one zone per `pulumi up`: pin the zones")
    assert "multizone:controlPlaneZones.<zone>.imageId" in failure.reason
    assert "Changing the control plane" in failure.reason


def test_a_new_ami_everywhere_is_refused_naming_three_zones() -> None:
    new = hosts(a={"imageId": NEW_AMI}, b={"imageId": NEW_AMI}, c={"imageId": NEW_AMI})
    (failure,) = check(hosts(), new).failures
    assert " in 3 zones at once (" in failure.reason


def test_a_new_subnet_in_two_zones_is_refused() -> None:
    """A subnet's new range replaces the subnet, and with it the instances in it."""
    new = hosts(a={"privateSubnet": "10.0.80.0/20"}, c={"privateSubnet": "10.0.96.0/20"})
    (failure,) = check(hosts(), new).failures
    assert "eu-west-1a: mz-prod-cp-a1 privateSubnet 10.0.16.0/20 -> 10.0.80.0/20" in \
        failure.reason


@pytest.mark.parametrize("change", [{"imageId": NEW_AMI}, {"instanceType": "m7i.large"},
                                    {"imageId": NEW_AMI, "instanceType": "m7i.large"}])
def test_a_change_in_one_zone_is_allowed(change: dict[str, str]) -> None:
    new = hosts(b=change)
    result = check(hosts(), new)
    assert result.failures == []
    assert result.inputs == {"hosts": new}


def test_no_change_and_a_first_creation_are_allowed() -> None:
    assert check(hosts(), hosts()).failures == []
    assert check(None, hosts(a={"imageId": NEW_AMI}, b={"imageId": NEW_AMI})).failures == []
    diff = ControlPlaneRolloutProvider().diff("id", {"hosts": hosts()}, {"hosts": hosts()})
    assert diff.changes is False


def test_hosts_added_or_removed_are_not_replacements() -> None:
    """Scaling to two hosts a zone adds one in each zone: nothing running is touched."""
    one_each = {h: v for h, v in hosts().items() if h.endswith("1")}
    assert check(one_each, hosts()).failures == []
    assert check(hosts(), one_each).failures == []


def test_the_guard_updates_in_place_and_keeps_what_it_checked() -> None:
    provider = ControlPlaneRolloutProvider()
    created = provider.create({"hosts": hosts()})
    assert created.outs == {"hosts": hosts()}
    moved = {"hosts": hosts(c={"imageId": NEW_AMI})}
    diff = provider.diff(created.id, {"hosts": hosts()}, moved)
    assert diff.changes is True and diff.replaces == []
    assert provider.update(created.id, {"hosts": hosts()}, moved).outs == moved


# ------------------------------------------------------------------ in the program


def evaluate_with_dependencies(**overrides: Any) -> Evaluation:
    saved = review_evaluation.RecordingMonitor
    review_evaluation.RecordingMonitor = DependencyMonitor  # type: ignore[misc]
    try:
        return evaluate_bootstrapped("prod", stack_config("prod", **overrides))
    finally:
        review_evaluation.RecordingMonitor = saved  # type: ignore[misc]


@pytest.fixture(scope="module")
def moved_a() -> Evaluation:
    """prod with zone a's control plane on a new AMI and instance type."""
    return evaluate_with_dependencies(controlPlaneZones={
        "eu-west-1a": {"imageId": NEW_AMI, "instanceType": "m7i.large"}})


def guard_hosts(ev: Evaluation) -> dict[str, dict[str, str]]:
    (guard,) = ev.of_type(TYPE)
    return copy.deepcopy(guard.inputs["hosts"])


def test_every_control_plane_instance_depends_on_the_guard(moved_a: Evaluation) -> None:
    monitor = moved_a.monitor
    assert isinstance(monitor, DependencyMonitor)
    (guard,) = moved_a.of_type(TYPE)
    guard_urn = monitor.urns[(guard.typ, guard.name)]
    control_plane = [i for i in moved_a.of_type(INSTANCE) if "control-plane" in i.name]
    assert len(control_plane) == 3
    for inst in control_plane:
        assert guard_urn in monitor.dependencies[inst.name], inst.name
    (bastion,) = [i for i in moved_a.of_type(INSTANCE) if "control-plane" not in i.name]
    assert guard_urn not in monitor.dependencies[bastion.name]


def test_a_zone_override_reaches_that_zones_hosts_only(moved_a: Evaluation,
                                                       prod: Evaluation) -> None:
    by_zone = {i.inputs["tags"]["multizone/zone"]: i.inputs
               for i in moved_a.of_type(INSTANCE) if "control-plane" in i.name}
    assert (by_zone["eu-west-1a"]["ami"], by_zone["eu-west-1a"]["instanceType"]) == \
        (NEW_AMI, "m7i.large")
    prod_values = stack_values("prod")
    stack_wide = (prod_values["multizone:imageId"],
                  prod_values["multizone:controlPlaneInstanceType"])
    assert stack_wide != (NEW_AMI, "m7i.large")
    for zone in ("eu-west-1b", "eu-west-1c"):
        assert (by_zone[zone]["ami"], by_zone[zone]["instanceType"]) == stack_wide
    moved, before = guard_hosts(moved_a), guard_hosts(prod)
    assert {h: v["zone"] for h, v in moved.items()} == {
        "mz-prod-cp-a1": "eu-west-1a", "mz-prod-cp-b1": "eu-west-1b",
        "mz-prod-cp-c1": "eu-west-1c"}
    # From prod's last up to this one: one zone moves, which the guard allows ...
    assert refusal(before, moved) is None
    assert rollout_guard.changes_by_zone(before, moved).keys() == {"eu-west-1a"}


def test_a_new_stack_ami_is_refused_until_pinned(prod: Evaluation) -> None:
    """... while a new `imageId` for the whole stack moves every zone at once, and pinning
    two zones to the old AMI makes it one zone again."""
    everywhere = evaluate_bootstrapped("prod", stack_config("prod", imageId=NEW_AMI))
    reason = refusal(guard_hosts(prod), guard_hosts(everywhere))
    assert reason is not None and " in 3 zones at once " in reason
    old = stack_values("prod")["multizone:imageId"]
    pinned = evaluate_bootstrapped("prod", stack_config("prod", imageId=NEW_AMI, controlPlaneZones={
        "eu-west-1b": {"imageId": old}, "eu-west-1c": {"imageId": old}}))
    assert refusal(guard_hosts(prod), guard_hosts(pinned)) is None


def test_the_etcd_attachment_is_deleted_before_it_is_replaced(prod: Evaluation) -> None:
    attachments = prod.of_type(ATTACHMENT)
    assert len(attachments) == 3
    for att in attachments:
        assert prod.monitor.delete_before_replace[(att.typ, att.name)] is True, att.name
        assert att.inputs["stopInstanceBeforeDetaching"] is True
    # The instances themselves keep Pulumi's default (the new one first): only the
    # attachment has to let go of the volume.
    for inst in prod.of_type(INSTANCE):
        assert prod.monitor.delete_before_replace[(inst.typ, inst.name)] is False
