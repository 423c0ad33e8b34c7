"""The diff: added / removed / changed, per property, with what forces a replacement."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest

from components.review import diff
from components.review.cli import main
from tests.review.conftest import ROOT

SUBNET = "aws:ec2/subnet:Subnet::network-private-eu-west-1a"
INSTANCE = "aws:ec2/instance:Instance::control-plane-eu-west-1a-1"


def changed(doc: dict[str, Any], key: str, **inputs: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["resources"][key]["inputs"].update(inputs)
    return out


def test_same_document_no_changes(prod_doc: dict[str, Any]) -> None:
    result = diff.compare(prod_doc, prod_doc)
    assert result.empty
    assert "no changes" in diff.text(result, "prod", "a", "b")


def test_a_subnet_cidr_change_forces_replacement(prod_doc: dict[str, Any]) -> None:
    result = diff.compare(prod_doc, changed(prod_doc, SUBNET, cidrBlock="10.0.64.0/20"))
    change = next(c for c in result.changed if c.key == SUBNET)
    assert change.replaced and [p.path for p in change.properties] == ["cidrBlock"]
    out = diff.text(result, "prod", "main", "working tree")
    assert "~ aws:ec2/subnet:Subnet network-private-eu-west-1a  (REPLACE)" in out
    assert "FORCES REPLACEMENT: hashicorp/terraform-provider-aws internal/service/ec2/" \
           "vpc_subnet.go" in out
    assert "! protected: `pulumi up` fails rather than replace it" in out


def test_an_instance_type_change_is_an_update(prod_doc: dict[str, Any]) -> None:
    result = diff.compare(prod_doc, changed(prod_doc, INSTANCE, instanceType="m6i.2xlarge"))
    (change,) = result.changed
    assert not change.replaced
    assert 'instanceType: "m6i.xlarge" -> "m6i.2xlarge"' in diff.text(result, "prod", "a", "b")


def test_a_changed_secret_is_named_never_shown(prod_doc: dict[str, Any]) -> None:
    result = diff.compare(prod_doc, changed(prod_doc, INSTANCE, userData={"secret": "other"}))
    line = next(p for p in result.changed[0].properties if p.path == "userData")
    assert line.ignored and not result.changed[0].replaced  # ignoreChanges in the program
    out = diff.text(result, "prod", "a", "b")
    assert "userData: [secret] -> [secret] (changed)   ignored (ignoreChanges)" in out


def test_added_removed_and_unknown_types(prod_doc: dict[str, Any]) -> None:
    head = copy.deepcopy(prod_doc)
    gone = head["resources"].pop(SUBNET)
    head["resources"]["aws:rds/instance:Instance::db"] = {
        **gone, "type": "aws:rds/instance:Instance", "name": "db", "urn": "", "protect": False}
    result = diff.compare(prod_doc, head)
    assert [r["name"] for r in result.added] == ["db"]
    assert [r["name"] for r in result.removed] == ["network-private-eu-west-1a"]
    out = diff.text(result, "prod", "a", "b")
    assert "+ aws:rds/instance:Instance db" in out
    assert "- aws:ec2/subnet:Subnet network-private-eu-west-1a" in out
    assert "? replacement rules unknown for aws:rds/instance:Instance" in out


def test_the_working_tree_against_head_renders_both_sides(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "test", "--base", "HEAD"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# stack test: HEAD (")


def test_a_bad_ref_is_one_line_and_exit_2() -> None:
    run = subprocess.run([sys.executable, "-m", "components.review", "diff", "prod", "--base",
                          "no-such-ref-xyz"], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "--base no-such-ref-xyz: no such commit" in run.stderr


def test_a_replaced_subnet_replaces_what_must_move_with_it(prod_doc: dict[str, Any]) -> None:
    """The instance in the subnet goes (subnetId forces it), its volume attachment and
    target registrations follow; balancers only update their subnet lists."""
    result = diff.compare(prod_doc, changed(prod_doc, SUBNET, cidrBlock="10.0.64.0/20"))
    verdict = {c.head["name"]: c.replaced for c in result.changed}
    assert verdict["control-plane-eu-west-1a-1"] is True
    assert verdict["control-plane-eu-west-1a-1-etcd"] is True  # the attachment, not the volume
    assert verdict["lb-zonal-mz-prod-cp-a1"] is True
    assert verdict["lb-zonal"] is False
    assert "control-plane-eu-west-1b-1" not in verdict
    volume = "aws:ebs/volume:Volume::control-plane-eu-west-1a-1-etcd"
    assert volume not in {c.key for c in result.changed}
