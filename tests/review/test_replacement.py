"""The replacement facts: every type the program creates is covered; conditions hold."""

from __future__ import annotations

from typing import Any

from components.review import replacement


def test_every_type_the_program_creates_has_an_entry(prod_doc: dict[str, Any]) -> None:
    types = {r["type"] for r in prod_doc["resources"].values()}
    cloud = {t for t in types if t.startswith(("aws:", "pulumi-python:"))}
    assert len(cloud) >= 25
    assert cloud <= set(replacement.FACTS), sorted(cloud - set(replacement.FACTS))


def test_every_row_names_a_source_and_the_table_has_no_stale_types(
        prod_doc: dict[str, Any]) -> None:
    types = {r["type"] for r in prod_doc["resources"].values()}
    assert set(replacement.FACTS) <= types  # a row for a type we dropped would mislead
    for rules in replacement.FACTS.values():
        assert all(rule.source for rule in rules)


def test_instance_user_data_replaces_only_with_replace_on_change() -> None:
    typ = "aws:ec2/instance:Instance"
    assert replacement.replacing(typ, "userData", {}, {"userDataReplaceOnChange": True})
    assert replacement.replacing(typ, "userData", {}, {"userDataReplaceOnChange": False}) is None
    assert replacement.replacing(typ, "instanceType", {}, {}) is None
    assert replacement.replacing(typ, "subnetId", {}, {})
    assert replacement.replacing(typ, "rootBlockDevice.encrypted", {}, {})
    assert replacement.replacing(typ, "rootBlockDevice.volumeSize", {}, {}) is None


def test_a_rule_changing_its_source_kind_is_replaced_not_a_port_change() -> None:
    typ = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
    assert replacement.replacing(typ, "cidrIpv4", {"cidrIpv4": "10.0.0.0/8"},
                                 {"referencedSecurityGroupId": "sg-1"})
    assert replacement.replacing(typ, "cidrIpv4", {"cidrIpv4": "10.0.0.0/8"},
                                 {"cidrIpv4": "10.1.0.0/16"}) is None
    assert replacement.replacing(typ, "fromPort", {}, {}) is None


def test_unknown_types_are_said_to_be_unknown() -> None:
    assert not replacement.known("aws:rds/instance:Instance")
    assert replacement.known("multizone:components:Network")
