"""The render: stable, secrets masked, AWS-assigned values as references."""

from __future__ import annotations

import json
import re
from typing import Any

from components.review.render import document, evaluate_stack, text
from tests.review.conftest import ROOT


def test_two_renders_of_the_same_program_are_identical(prod_doc: dict[str, Any]) -> None:
    again = document(evaluate_stack(ROOT, "prod"))
    assert text(again) == text(prod_doc)
    assert again == prod_doc  # secret digests too: same key within a process


def test_secrets_are_masked(prod_doc: dict[str, Any]) -> None:
    out = text(prod_doc)
    assert "PRIVATE KEY" not in out
    instances = [r for r in prod_doc["resources"].values()
                 if r["type"] == "aws:ec2/instance:Instance"]
    assert len(instances) == 4
    assert all(set(r["inputs"]["userData"]) == {"secret"} for r in instances)
    # ...and no zone's launch template shows a join token (a secret there would be masked).
    templates = [r for r in prod_doc["resources"].values()
                 if r["type"] == "aws:ec2/launchTemplate:LaunchTemplate"]
    assert len(templates) == 3
    assert not re.search(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b", out)  # kubeadm token form
    assert out.count("userData = [secret]") >= 4


def test_assigned_values_are_references_not_mock_ids(prod_doc: dict[str, Any]) -> None:
    out = text(prod_doc)
    assert not re.search(r"\b(subnet|sg|vpc|i|vol|lt)-[0-9a-f]{17}\b", out)
    subnet = prod_doc["resources"]["aws:ec2/instance:Instance::control-plane-eu-west-1a-1"]
    # The route table has the subnet's name: the reference names the type.
    assert subnet["inputs"]["subnetId"] == "${Subnet:network-private-eu-west-1a.id}"


def test_node_user_data_is_per_pool_and_holds_no_credential(prod_doc: dict[str, Any]) -> None:
    """A node proves itself by its instance identity: the launch template's user data names
    its own pool and carries no token or key, masked or not."""
    one = prod_doc["resources"]["aws:ec2/launchTemplate:LaunchTemplate::nodes-eu-west-1a"]
    other = prod_doc["resources"]["aws:ec2/launchTemplate:LaunchTemplate::nodes-eu-west-1b"]
    shown = json.dumps(one["inputs"]["userData"])
    assert "nodes-eu-west-1a" in shown and "nodes-eu-west-1b" not in shown
    assert "PRIVATE KEY" not in shown and "token" not in shown.lower()
    assert one["inputs"]["userData"] != other["inputs"]["userData"]  # per zone and pool


def test_protection_and_ignored_changes_are_shown(prod_doc: dict[str, Any]) -> None:
    head = next(line for line in text(prod_doc).splitlines()
                if line.startswith("  aws:ec2/instance:Instance bastion-eu-west-1a"))
    assert "protect" in head and "ignoreChanges: userData" in head
